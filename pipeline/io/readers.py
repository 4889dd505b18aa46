"""Streaming one input file into commit units of rows.

`read_units` reads a file sequentially (never whole), turns every record into exactly one
row of `ROW_SCHEMA` (good rows carry `text`; bad rows carry `error_kind` and a readable
`error_message` instead) and yields one Arrow table per commit unit. A unit is the set of
rows whose `position // rows_per_unit` is equal; its id is `unit_id(...)`, stable across
runs, so a resumed run passes the ids it already committed as `skip_units`.

Transport is smart_open with its own decompression disabled; decompression (gzip, bz2,
zstd) happens here on top of the raw stream, whose `tell()` measures the compressed bytes
consumed for progress reporting (`bytes_read`).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.sources import SourceFile

__all__ = ["ROW_SCHEMA", "ERROR_KINDS", "unit_id", "read_units", "open_raw"]

ROW_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("unit", pa.string()),
        pa.field("unit_rows", pa.int64()),
        pa.field("text", pa.string(), nullable=True),
        pa.field("error_kind", pa.string(), nullable=True),
        pa.field("error_message", pa.string(), nullable=True),
        pa.field("bytes_read", pa.int64()),
    ]
)

ERROR_KINDS = ("malformed_record", "invalid_utf8", "invalid_text", "missing_field", "empty_text", "read_error")

CSV_FIELD_LIMIT = 128 * 1024 * 1024  # a single CSV field may be up to 128 MiB
_READ_BUFFER = 1 << 20
_PARQUET_BATCH = 8192
_MAX_LISTED_FIELDS = 20

Row = tuple  # (row_id, position, text, error_kind, error_message)


def unit_id(src: SourceFile, position: int, rows_per_unit: int) -> str:
    return f"{src.key}-{position // rows_per_unit:08d}"


# ------------------------------------------------------------------------ helpers


def _utf8_ok(s: str) -> bool:
    """False if s holds lone surrogates (undecodable bytes or \\ud800-style JSON escapes)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(s: str) -> str:
    """Make a message safe for Arrow: lone surrogates become escapes."""
    return s if _utf8_ok(s) else s.encode("utf-8", "backslashreplace").decode("utf-8")


def _fields_list(names: Any) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:_MAX_LISTED_FIELDS])
    if len(names) > _MAX_LISTED_FIELDS:
        shown += f", ... ({len(names)} in all)"
    return _clean(shown) if names else "(none)"


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _salvage_id(line: bytes, id_field: Optional[str], loads: Callable[[str], Any]) -> Optional[str]:
    """The id of a JSON line whose bytes are not all UTF-8 (the bad bytes are usually in the
    text), so that its error record carries the id the user knows."""
    if id_field is None:
        return None
    try:
        obj = loads(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    v = obj.get(id_field) if type(obj) is dict else None
    if type(v) is int:
        return str(v)
    if type(v) is str and v.strip() and _utf8_ok(v):
        return v
    return None


def _text_problem(t: Any, name: str, where: str, surrogate_kind: str = "invalid_text") -> tuple[str, str]:
    """(error_kind, message) for a text value that failed the fast check."""
    if t is None:
        return "empty_text", f"{where}field '{name}' is null"
    if isinstance(t, bytes):
        return "malformed_record", f"{where}field '{name}' is binary, not a string"
    if not isinstance(t, str):
        return "malformed_record", f"{where}field '{name}' is {_a(_json_type(t))}, not a string"
    if not t:
        return "empty_text", f"{where}field '{name}' is empty"
    if t.isspace():
        return "empty_text", f"{where}field '{name}' holds only whitespace"
    if "\x00" in t:
        return "invalid_text", f"{where}field '{name}' contains a NUL (\\x00) character at offset {t.index(chr(0))}"
    if surrogate_kind == "invalid_utf8":
        return "invalid_utf8", f"{where}field '{name}' is not valid UTF-8"
    return "invalid_text", f"{where}field '{name}' contains a lone surrogate (not valid Unicode)"


def _text_ok(t: Any) -> bool:
    return type(t) is str and bool(t) and not t.isspace() and "\x00" not in t and (t.isascii() or _utf8_ok(t))


def _id_value(v: Any, name: str, where: str) -> tuple[str | None, str | None, str | None]:
    """(row_id, error_kind, message) from an id field value; row_id None on error."""
    if v is None:
        return None, "missing_field", f"{where}id field '{name}' is null"
    if type(v) is str:
        if not v or v.isspace():
            return None, "missing_field", f"{where}id field '{name}' is empty"
        if not _utf8_ok(v):
            return None, "malformed_record", f"{where}id field '{name}' is not valid Unicode"
        return v, None, None
    if isinstance(v, bool) or isinstance(v, (list, dict, bytes)):
        return None, "malformed_record", f"{where}id field '{name}' is {_a(_json_type(v))}; expected a string or a number"
    s = str(v)
    return (s, None, None) if _utf8_ok(s) else (None, "malformed_record", f"{where}id field '{name}' is not valid Unicode")


# --------------------------------------------------------------------- transport


def open_raw(uri: str) -> Any:
    """The raw (still compressed) byte stream of a file, through smart_open."""
    import smart_open

    return smart_open.open(uri, "rb", compression="disable")


def _decompressed(raw: Any, compression: str | None) -> io.BufferedReader:
    if compression is None:
        stream: Any = raw
    elif compression == "gzip":
        stream = gzip.GzipFile(fileobj=raw, mode="rb")
    elif compression == "bz2":
        stream = bz2.BZ2File(raw, mode="rb")
    elif compression == "zstd":
        stream = _ZstdReader(raw)
    else:
        raise ValueError(f"unknown compression {compression!r}")
    return io.BufferedReader(_OneRead(stream), buffer_size=_READ_BUFFER)


class _ZstdReader(io.RawIOBase):
    """Streaming zstd decompression (all frames) that raises on a truncated last frame.

    zstandard's stream_reader returns a silent EOF when the input stops mid-frame; a file cut
    short must become a read_error, so frames are tracked here with decompressobj().
    """

    _CHUNK = 1 << 16

    def __init__(self, fp: Any) -> None:
        import zstandard

        super().__init__()
        self._fp = fp
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = self._dctx.decompressobj()
        self._pending = b""
        self._offset = 0
        self._in_frame = False
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._offset >= len(self._pending):
            if self._done:
                return 0
            chunk = self._fp.read(self._CHUNK)
            if not chunk:
                self._done = True
                if self._in_frame:
                    raise EOFError("zstd stream ended in the middle of a frame (truncated file)")
                return 0
            self._feed(chunk)
        n = min(len(b), len(self._pending) - self._offset)
        b[:n] = self._pending[self._offset : self._offset + n]
        self._offset += n
        return n

    def _feed(self, data: bytes) -> None:
        out = []
        while data:
            out.append(self._dobj.decompress(data))
            self._in_frame = True
            if self._dobj.eof:  # frame complete; what follows starts the next frame
                data = self._dobj.unused_data
                self._dobj = self._dctx.decompressobj()
                self._in_frame = False
            else:
                data = b""
        self._pending = b"".join(out)
        self._offset = 0


class _OneRead(io.RawIOBase):
    """Raw adapter whose readinto does one read1() of the stream below.

    A plain `BufferedReader(GzipFile)` asks for a full buffer at once, so when the stream
    breaks (a truncated gzip) the data decompressed before the break is lost with the
    exception; one read1() per fill keeps every byte that could be read.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream
        self._read = getattr(stream, "read1", None) or stream.read

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._read(len(b))
        n = len(data)
        b[:n] = data
        return n


# ------------------------------------------------------------------------- units


class _Units:
    """Collects rows into units; decides which to yield and their bytes_read.

    A finished unit is yielded at once, unless some later unit of this file is to be skipped:
    then it is held until the next unit that is not skipped starts (or the file ends), so
    that the bytes of skipped units at the end of a file still land in a yielded table.
    """

    def __init__(self, src: SourceFile, rows_per_unit: int, skip_units: frozenset[str] | set[str]):
        self.src = src
        self.rpu = rows_per_unit
        prefix = src.key + "-"
        self.skip: set[int] = set()
        for u in skip_units:
            if isinstance(u, str) and u.startswith(prefix) and u[len(prefix) :].isdigit():
                self.skip.add(int(u[len(prefix) :]))
        self.max_skip = max(self.skip, default=-1)
        self.cur = -1  # current unit number; -1 before the first record
        self.cur_skipped = False
        self.rows: list[Row] = []
        self.boundary = 0  # first position of the next unit
        self.held: tuple[int, list[Row], int] | None = None  # (unit, rows, end offset)
        self.last_cut = 0  # raw offset up to which bytes were reported

    # Called by readers when position >= self.boundary.
    def enter(self, position: int, offset: int) -> list[pa.Table]:
        """Start the unit holding `position`; `offset` is the raw offset where the previous one ended."""
        out: list[pa.Table] = []
        if self.cur >= 0 and not self.cur_skipped and self.rows:
            if self.held is not None:  # cannot happen: held is flushed when a non-skipped unit starts
                out.append(self._flush_held())
            if self.max_skip > self.cur:
                self.held = (self.cur, self.rows, offset)
            else:
                out.append(self._table(self.cur, self.rows, max(0, offset - self.last_cut)))
                self.last_cut = max(self.last_cut, offset)
        self.rows = []
        self.cur = position // self.rpu
        self.boundary = (self.cur + 1) * self.rpu
        self.cur_skipped = self.cur in self.skip
        if not self.cur_skipped and self.held is not None:
            out.append(self._flush_held())
        return out

    def _flush_held(self) -> pa.Table:
        assert self.held is not None
        unit, rows, end = self.held
        self.held = None
        t = self._table(unit, rows, max(0, end - self.last_cut))
        self.last_cut = max(self.last_cut, end)
        return t

    def finish(self, total: int) -> list[pa.Table]:
        """End of file (or of what could be read): yield what is left; the last table gets the remainder."""
        out: list[pa.Table] = []
        current = self.rows if (self.cur >= 0 and not self.cur_skipped and self.rows) else None
        if self.held is not None:
            unit, rows, end = self.held
            self.held = None
            if current is None:
                end = max(end, total)
            out.append(self._table(unit, rows, max(0, end - self.last_cut)))
            self.last_cut = max(self.last_cut, end)
        if current is not None:
            out.append(self._table(self.cur, current, max(0, max(total, self.last_cut) - self.last_cut)))
            self.last_cut = max(self.last_cut, total)
        self.rows = []
        return out

    def _table(self, unit: int, rows: list[Row], nbytes: int) -> pa.Table:
        n = len(rows)
        rids, positions, texts, kinds, messages = zip(*rows)
        uid = f"{self.src.key}-{unit:08d}"
        byte_col = [0] * n
        byte_col[0] = nbytes
        return pa.Table.from_arrays(
            [
                pa.array(rids, pa.string()),
                pa.array([self.src.uri] * n, pa.string()),
                pa.array(positions, pa.int64()),
                pa.array([uid] * n, pa.string()),
                pa.array([n] * n, pa.int64()),
                pa.array(texts, pa.string()),
                pa.array(kinds, pa.string()),
                pa.array(messages, pa.string()),
                pa.array(byte_col, pa.int64()),
            ],
            schema=ROW_SCHEMA,
        )


_MISSING = object()


def _describe(exc: BaseException) -> str:
    msg = str(exc)
    return _clean(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


# ------------------------------------------------------------------- line formats
#
# Each reader is a generator of tables. It appends rows to `units.rows` (re-read after every
# `units.enter`, which starts a new list) and keeps `state["pos"]` = the last position read
# when it stops or fails, so a read error row lands at the next position.


def _skip_bom(stream: io.BufferedReader) -> None:
    if stream.peek(3)[:3] == b"\xef\xbb\xbf":
        stream.read(3)


def _jsonl_rows(stream: Any, src: SourceFile, cfg: InputConfig, units: _Units, tell: Callable[[], int], state: dict):
    uri = src.uri
    text_field = cfg.text_field
    id_field = cfg.id_field
    loads = json.loads
    missing = _MISSING
    pos = -1
    rows = units.rows
    try:
        _skip_bom(stream)
        for line in stream:
            pos += 1
            if pos >= units.boundary:
                yield from units.enter(pos, tell())
                rows = units.rows
            if units.cur_skipped or line.isspace():
                continue
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.append((_salvage_id(line, id_field, loads) or f"{uri}#{pos}", pos, None, "invalid_utf8",
                             f"line {pos + 1}: invalid UTF-8 at byte {e.start}: {e.reason}"))
                continue
            try:
                obj = loads(s)
            except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
                msg = getattr(e, "msg", None) or str(e) or type(e).__name__
                col = getattr(e, "colno", None)
                at = f" (column {col})" if col else ""
                rows.append((f"{uri}#{pos}", pos, None, "malformed_record",
                             _clean(f"line {pos + 1}: invalid JSON: {msg}{at}")))
                continue
            if type(obj) is not dict:
                rows.append((f"{uri}#{pos}", pos, None, "malformed_record",
                             f"line {pos + 1}: expected a JSON object, got {_a(_json_type(obj))}"))
                continue
            if id_field is None:
                rid = f"{uri}#{pos}"
            else:
                v = obj.get(id_field, missing)
                if type(v) is str and v and not v.isspace() and (v.isascii() or _utf8_ok(v)):
                    rid = v
                elif v is missing:
                    rows.append((f"{uri}#{pos}", pos, None, "missing_field",
                                 f"line {pos + 1}: id field '{id_field}' missing; fields present: {_fields_list(obj)}"))
                    continue
                else:
                    rid, kind, msg = _id_value(v, id_field, f"line {pos + 1}: ")
                    if rid is None:
                        rows.append((f"{uri}#{pos}", pos, None, kind, msg))
                        continue
            t = obj.get(text_field, missing)
            if type(t) is str and t and not t.isspace() and "\x00" not in t and (t.isascii() or _utf8_ok(t)):
                rows.append((rid, pos, t, None, None))
            elif t is missing:
                rows.append((rid, pos, None, "missing_field",
                             f"line {pos + 1}: field '{text_field}' missing; fields present: {_fields_list(obj)}"))
            else:
                kind, msg = _text_problem(t, text_field, f"line {pos + 1}: ")
                rows.append((rid, pos, None, kind, msg))
    finally:
        state["pos"] = pos


def _text_rows(stream: Any, src: SourceFile, cfg: InputConfig, units: _Units, tell: Callable[[], int], state: dict):
    uri = src.uri
    pos = -1
    rows = units.rows
    try:
        _skip_bom(stream)
        for line in stream:
            pos += 1
            if pos >= units.boundary:
                yield from units.enter(pos, tell())
                rows = units.rows
            if units.cur_skipped:
                continue
            if line.endswith(b"\n"):
                line = line[:-1]
                if line.endswith(b"\r"):
                    line = line[:-1]
            elif line.endswith(b"\r"):
                line = line[:-1]
            try:
                t = line.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.append((f"{uri}#{pos}", pos, None, "invalid_utf8",
                             f"line {pos + 1}: invalid UTF-8 at byte {e.start}: {e.reason}"))
                continue
            if t and not t.isspace() and "\x00" not in t:
                rows.append((f"{uri}#{pos}", pos, t, None, None))
            elif "\x00" in t:
                rows.append((f"{uri}#{pos}", pos, None, "invalid_text",
                             f"line {pos + 1}: contains a NUL (\\x00) character at offset {t.index(chr(0))}"))
            else:
                rows.append((f"{uri}#{pos}", pos, None, "empty_text",
                             f"line {pos + 1}: " + ("empty line" if not t else "the line holds only whitespace")))
    finally:
        state["pos"] = pos


def _csv_rows(stream: Any, src: SourceFile, cfg: InputConfig, units: _Units, tell: Callable[[], int], state: dict):
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    uri = src.uri
    text_field = cfg.text_field
    id_field = cfg.id_field
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text_stream, delimiter=cfg.csv_delimiter)
    pos = -1
    try:
        try:
            header = next(reader)
        except StopIteration:
            return  # empty file: no records
        except csv.Error as e:
            raise OSError(f"cannot parse the CSV header: {e}") from e
        ncols = len(header)
        ti = header.index(text_field) if text_field in header else None
        ii = (header.index(id_field) if id_field in header else None) if id_field else None
        present = _fields_list(header)
        missing_text = f"column '{text_field}' missing; columns present: {present}"
        missing_id = f"id column '{id_field}' missing; columns present: {present}"
        rows = units.rows
        while True:
            try:
                for rec in reader:
                    if not rec:
                        continue  # blank line: not a record
                    pos += 1
                    if pos >= units.boundary:
                        yield from units.enter(pos, tell())
                        rows = units.rows
                    if units.cur_skipped:
                        continue
                    if len(rec) != ncols:
                        rows.append((f"{uri}#{pos}", pos, None, "malformed_record",
                                     f"CSV record {pos} (line {reader.line_num}): {len(rec)} fields, but the header has {ncols}"))
                        continue
                    if id_field is None:
                        rid = f"{uri}#{pos}"
                    else:
                        v = rec[ii] if ii is not None else None
                        if v and not v.isspace() and (v.isascii() or _utf8_ok(v)):
                            rid = v
                        else:
                            where = f"CSV record {pos} (line {reader.line_num}): "
                            if v is None:
                                rows.append((f"{uri}#{pos}", pos, None, "missing_field", where + missing_id))
                            elif not v or v.isspace():
                                rows.append((f"{uri}#{pos}", pos, None, "missing_field", f"{where}id field '{id_field}' is empty"))
                            else:
                                rows.append((f"{uri}#{pos}", pos, None, "invalid_utf8",
                                             f"{where}id field '{id_field}' is not valid UTF-8"))
                            continue
                    if ti is None:
                        rows.append((rid, pos, None, "missing_field",
                                     f"CSV record {pos} (line {reader.line_num}): {missing_text}"))
                        continue
                    t = rec[ti]
                    if t and not t.isspace() and "\x00" not in t and (t.isascii() or _utf8_ok(t)):
                        rows.append((rid, pos, t, None, None))
                    else:
                        kind, msg = _text_problem(t, text_field, f"CSV record {pos} (line {reader.line_num}): ",
                                                  surrogate_kind="invalid_utf8")
                        rows.append((rid, pos, None, kind, msg))
                break
            except csv.Error as e:  # a record the csv module cannot parse; the reader goes on after it
                pos += 1
                if pos >= units.boundary:
                    yield from units.enter(pos, tell())
                    rows = units.rows
                if not units.cur_skipped:
                    rows.append((f"{uri}#{pos}", pos, None, "malformed_record",
                                 _clean(f"CSV record {pos} (line {reader.line_num}): {e}")))
    finally:
        state["pos"] = pos


# ------------------------------------------------------------------------ parquet


def _parquet_rows(raw: Any, src: SourceFile, cfg: InputConfig, units: _Units, tell: Callable[[], int], state: dict):
    import pyarrow.parquet as pq

    pos = -1
    try:
        pf = pq.ParquetFile(raw)
        meta = pf.metadata
        n_total = meta.num_rows
        size = src.size
        if size < 0:  # unknown: the spooled compressed size, else the file's own
            size = int(state["total"]) if state.get("spool") is not None else -1
        if size < 0:
            try:
                size = int(raw.seek(0, io.SEEK_END))
            except Exception:
                size = 0
        state["total"] = size

        def offset(position: int) -> int:  # bytes attributed to the rows before `position`
            return size * position // n_total if n_total else size

        state["offset"] = offset
        uri = src.uri
        names = pf.schema_arrow.names
        text_field, id_field = cfg.text_field, cfg.id_field
        has_text = text_field in names
        has_id = id_field is not None and id_field in names
        present = _fields_list(names)
        text_type = pf.schema_arrow.field(text_field).type if has_text else None
        bad_type = text_type is not None and not (
            pa.types.is_string(text_type)
            or pa.types.is_large_string(text_type)
            or pa.types.is_binary(text_type)
            or pa.types.is_large_binary(text_type)
            or (pa.types.is_dictionary(text_type) and pa.types.is_string(text_type.value_type))
        )
        columns = [c for c in (text_field if has_text else None, id_field if has_id else None) if c]
        rpu = units.rpu
        start = 0
        for rg in range(meta.num_row_groups):
            rg_rows = meta.row_group(rg).num_rows
            first, last = start, start + rg_rows - 1
            start += rg_rows
            if rg_rows <= 0:
                continue
            if all(u in units.skip for u in range(first // rpu, last // rpu + 1)):
                # every unit of this row group was committed already: move past it unread
                if first >= units.boundary:
                    yield from units.enter(first, offset(first))
                if last >= units.boundary:
                    yield from units.enter(last, offset(last // rpu * rpu))
                pos = last
                continue
            if columns:
                batches = pf.iter_batches(batch_size=_PARQUET_BATCH, row_groups=[rg], columns=columns, use_threads=False)
            else:
                batches = [pa.record_batch([pa.nulls(rg_rows)], names=["_"])]
            for batch in batches:
                texts = batch.column(text_field).to_pylist() if has_text and not bad_type else None
                ids = batch.column(id_field).to_pylist() if has_id else None
                rows = units.rows
                for i in range(batch.num_rows):
                    pos += 1
                    if pos >= units.boundary:
                        yield from units.enter(pos, offset(pos))
                        rows = units.rows
                    if units.cur_skipped:
                        continue
                    if id_field is None:
                        rid = f"{uri}#{pos}"
                    elif not has_id:
                        rows.append((f"{uri}#{pos}", pos, None, "missing_field",
                                     f"row {pos}: id column '{id_field}' missing; columns present: {present}"))
                        continue
                    else:
                        rid, kind, msg = _id_value(ids[i], id_field, f"row {pos}: ")  # type: ignore[index]
                        if rid is None:
                            rows.append((f"{uri}#{pos}", pos, None, kind, msg))
                            continue
                    if texts is None:
                        if not has_text:
                            rows.append((rid, pos, None, "missing_field",
                                         f"row {pos}: column '{text_field}' missing; columns present: {present}"))
                        else:
                            rows.append((rid, pos, None, "malformed_record",
                                         f"row {pos}: column '{text_field}' has type {text_type}, expected string"))
                        continue
                    t = texts[i]
                    if type(t) is bytes:
                        try:
                            t = t.decode("utf-8")
                        except UnicodeDecodeError as e:
                            rows.append((rid, pos, None, "invalid_utf8",
                                         f"row {pos}: field '{text_field}': invalid UTF-8 at byte {e.start}: {e.reason}"))
                            continue
                    if _text_ok(t):
                        rows.append((rid, pos, t, None, None))
                    else:
                        kind, msg = _text_problem(t, text_field, f"row {pos}: ")
                        rows.append((rid, pos, None, kind, msg))
    finally:
        state["pos"] = pos


# --------------------------------------------------------------------------- main

_READERS = {"jsonl": _jsonl_rows, "text": _text_rows, "csv": _csv_rows, "parquet": _parquet_rows}


def read_units(
    src: SourceFile,
    cfg: InputConfig,
    rows_per_unit: int,
    skip_units: frozenset[str] | set[str] = frozenset(),
) -> Iterator[pa.Table]:
    """Stream one file; yield one ROW_SCHEMA table per commit unit whose id is not in skip_units.

    Never raises for bad records or a broken stream: those become error rows
    (a broken stream ends the file with one `read_error` row at the next position).
    """
    if rows_per_unit < 1:
        raise ValueError("rows_per_unit must be >= 1")
    units = _Units(src, rows_per_unit, skip_units)
    state: dict[str, Any] = {"pos": -1, "total": src.size}
    try:
        raw = open_raw(src.uri)
    except Exception as exc:
        yield from _read_error(units, src, 0, f"cannot open {src.uri}: {_describe(exc)}", max(src.size, 0), 0)
        return

    high = [0]

    def tell() -> int:
        try:
            high[0] = max(high[0], int(raw.tell()))
        except Exception:
            pass
        return high[0]

    try:
        try:
            fn = _READERS.get(src.format)
            if fn is None:
                raise OSError(f"unknown format {src.format!r}")
            if src.format == "parquet":
                # Parquet needs random access: without it (compressed file, HTTP server ignoring
                # range requests) the file is first copied to a temporary file.
                if not src.compression and not _seekable(raw, src.uri):
                    raw.close()
                    raw = open_raw(src.uri)
                    seekable = False
                else:
                    seekable = not src.compression
                if seekable:
                    gen = fn(raw, src, cfg, units, tell, state)
                else:
                    spool = _spool(_decompressed(raw, src.compression), state)
                    if src.size < 0:
                        state["total"] = tell()
                    gen = fn(spool, src, cfg, units, tell, state)
            else:
                gen = fn(_decompressed(raw, src.compression), src, cfg, units, tell, state)
            yield from gen
        except Exception as exc:
            pos = int(state["pos"]) + 1
            where = f"after position {pos - 1}" if pos > 0 else "at the start"
            offset_fn = state.get("offset")
            at = offset_fn(pos) if offset_fn else tell()
            yield from _read_error(units, src, pos, f"read failed {where}: {_describe(exc)}", _total(state, tell), at)
            return
        yield from units.finish(_total(state, tell))
    finally:
        for f in (state.get("spool"), raw):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


def _seekable(raw: Any, uri: str) -> bool:
    if not uri.lower().startswith(("http://", "https://")):
        return True
    try:  # a server may ignore range requests; smart_open then refuses to seek
        raw.seek(1)
        raw.seek(0)
    except Exception:
        return False
    return True


def _spool(stream: Any, state: dict) -> Any:
    """Copy a decompressed stream to an anonymous temporary file (deleted on close)."""
    import shutil
    import tempfile

    tmp = tempfile.TemporaryFile(prefix="pipeline-parquet-")
    state["spool"] = tmp
    shutil.copyfileobj(stream, tmp, _READ_BUFFER)
    tmp.seek(0)
    return tmp


def _total(state: dict, tell: Callable[[], int]) -> int:
    total = state.get("total")
    if total is None or total < 0:
        total = tell()  # unknown size: what was consumed
    return int(total)


def _read_error(units: _Units, src: SourceFile, position: int, message: str, total: int, offset: int) -> Iterator[pa.Table]:
    if position >= units.boundary:
        yield from units.enter(position, offset)
    if not units.cur_skipped:
        units.rows.append((f"{src.uri}#{position}", position, None, "read_error", _clean(message)))
    yield from units.finish(total)
