"""CSV with a header row; the position is the 0-based record number (blank lines are not records).

Parsing is strict: Python's default csv reader takes a stray quote for the start of a
quoted field and swallows the following lines into it without a word. Here a record the
strict parser rejects (a quote never closed, text after a closing quote), or a record
whose quoted field runs over several lines and then has the wrong number of fields, is
taken to be its first physical line alone: that line becomes one `malformed_record` row and
parsing starts again on the next line, so the rows after a bad quote are still read as rows
and rows + errors = records. A quoted field over several lines that parses cleanly with the
header's field count is valid CSV and stays one record (whether its quote was meant or not
cannot be told from the bytes).

The delimiter is `input.csv_delimiter`, or by extension: a tab for .tsv, a comma otherwise.
"""

from __future__ import annotations

import collections
import csv
import io
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import INVALID_UTF8, MALFORMED, MISSING, clean, fields_list, text_problem, utf8_ok
from pipeline.io.sources import COMPRESSION_EXTENSIONS, SourceFile
from pipeline.io.units import UnitBuilder

CSV_FIELD_LIMIT = 128 * 1024 * 1024  # a single CSV field may be up to 128 MiB


def delimiter_for(src: SourceFile, cfg: InputConfig) -> str:
    if cfg.csv_delimiter is not None:
        return cfg.csv_delimiter
    name = src.uri.lower().split("?", 1)[0]
    for ext in COMPRESSION_EXTENSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return "\t" if name.endswith(".tsv") else ","


class _Lines:
    """The physical lines of a text stream, fed to csv.reader one at a time (`feed`).

    Keeps the lines of the record being parsed (`taken`), so that after a bad record all of
    them but its first can be fed again: `resync` returns a new feed for a new csv.reader
    (the old one may have met the end of the stream).
    """

    def __init__(self, text: Any) -> None:
        self._src = iter(text)
        self._pending: collections.deque[str] = collections.deque()  # lines to feed again first
        self.taken: list[str] = []  # lines of the current record

    def feed(self) -> Iterator[str]:
        # A generator rather than a __next__ method: resuming it costs less per line.
        taken, pending = self.taken, self._pending
        while pending:
            line = pending.popleft()
            taken.append(line)
            yield line
        for line in self._src:
            taken.append(line)
            yield line

    def resync(self) -> Iterator[str]:
        """Keep only the first line of the current record; the others are fed again first
        (before any lines still pending from an earlier resync)."""
        self._pending.extendleft(reversed(self.taken[1:]))
        del self.taken[1:]
        return self.feed()


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor) -> Iterator[pa.Table]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    uri = src.uri
    text_field = cfg.text_field
    id_field = cfg.id_field
    lines = _Lines(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline=""))
    taken = lines.taken
    new_record = taken.clear
    base = 0  # physical lines before the current record
    delimiter = delimiter_for(src, cfg)
    reader = csv.reader(lines.feed(), delimiter=delimiter, strict=True)
    pos = -1
    try:
        try:
            header = next(reader)
        except StopIteration:
            cursor.rows = 0
            return  # empty file: no records
        except csv.Error as e:
            raise OSError(f"cannot parse the CSV header: {e}") from e
        ncols = len(header)
        ti = header.index(text_field) if text_field in header else None
        ii = (header.index(id_field) if id_field in header else None) if id_field else None
        present = fields_list(header)
        missing_text = f"column '{text_field}' missing; columns present: {present}"
        missing_id = f"id column '{id_field}' missing; columns present: {present}"
        rows = units.rows
        while True:
            base += len(taken)
            new_record()
            try:
                rec = next(reader)
                bad = None
                if not rec:
                    continue  # blank line: not a record
                if len(rec) != ncols and len(taken) > 1:
                    bad = f"{len(rec)} fields, but the header has {ncols}"
            except StopIteration:
                break
            except csv.Error as e:
                bad = f"{e}"
            if bad is not None:
                # A quote that opens a field and never closes right: its first line is the bad record.
                first, last = base + 1, base + len(taken)
                over = f"; a quoted field ran over lines {first}-{last}" if last > first else ""
                reader = csv.reader(lines.resync(), delimiter=delimiter, strict=True)
                pos += 1
                if pos >= units.boundary:
                    yield from units.enter(pos, tell())
                    rows = units.rows
                if not units.cur_skipped:
                    rows.append((f"{uri}#{pos}", pos, None, MALFORMED, clean(
                        f"CSV record {pos} (line {first}): malformed quoting ({bad}){over}; "
                        f"line {first} is taken alone as this record and reading goes on at line {first + 1}")))
                continue
            pos += 1
            if pos >= units.boundary:
                yield from units.enter(pos, tell())
                rows = units.rows
            if units.cur_skipped:
                continue
            line_num = base + len(taken)
            if len(rec) != ncols:
                rows.append((f"{uri}#{pos}", pos, None, MALFORMED,
                             f"CSV record {pos} (line {line_num}): {len(rec)} fields, but the header has {ncols}"))
                continue
            if id_field is None:
                rid = f"{uri}#{pos}"
            else:
                v = rec[ii] if ii is not None else None
                if v and not v.isspace() and (v.isascii() or utf8_ok(v)):
                    rid = v
                else:
                    where = f"CSV record {pos} (line {line_num}): "
                    if v is None:
                        rows.append((f"{uri}#{pos}", pos, None, MISSING, where + missing_id))
                    elif not v or v.isspace():
                        rows.append((f"{uri}#{pos}", pos, None, MISSING, f"{where}id field '{id_field}' is empty"))
                    else:
                        rows.append((f"{uri}#{pos}", pos, None, INVALID_UTF8, f"{where}id field '{id_field}' is not valid UTF-8"))
                    continue
            if ti is None:
                rows.append((rid, pos, None, MISSING, f"CSV record {pos} (line {line_num}): {missing_text}"))
                continue
            t = rec[ti]
            if t and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t)):
                rows.append((rid, pos, t, None, None))
            else:
                kind, msg = text_problem(t, text_field, f"CSV record {pos} (line {line_num}): ", surrogate_kind=INVALID_UTF8)
                rows.append((rid, pos, None, kind, msg))
        cursor.rows = pos + 1
    finally:
        cursor.pos = pos
