"""Streaming one input file into commit units of rows: the public entry point of reading.

`read_units` reads a file sequentially (never whole), turns every record into exactly one
row of `ROW_SCHEMA` (good rows carry `text`; bad rows carry `error_kind` and a readable
`error_message` instead) and yields one Arrow table per commit unit. A unit is the set of
rows whose `position // rows_per_unit` is equal; its id is `unit_id(...)`, stable across
runs, so a resumed run passes the units it already committed and they are skipped.

The parts, one concept each:
    transport.py     the raw bytes of a file (local, s3://, gs://, http(s)://)
    compression.py   gzip, bz2, zstd on top of them
    formats/         one module per record format: jsonl, csv, text, parquet
    units.py         rows into unit tables, ROW_SCHEMA, what is already committed
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.errors import INPUT_KINDS
from pipeline.io import transport
from pipeline.io.compression import decompressed
from pipeline.io.formats import Cursor, reader_for
from pipeline.io.formats.fields import READ_ERROR, clean, describe
from pipeline.io.sources import SourceFile
from pipeline.io.units import ROW_SCHEMA, CommittedState, UnitBuilder, unit_id

__all__ = ["ROW_SCHEMA", "ERROR_KINDS", "CommittedState", "unit_id", "read_units"]

# The error kinds a reader produces (the values of pipeline.errors.INPUT_KINDS).
ERROR_KINDS = frozenset(k.value for k in INPUT_KINDS)


def read_units(
    src: SourceFile,
    cfg: InputConfig,
    rows_per_unit: int,
    committed: CommittedState | Iterable[str] = CommittedState(),
) -> Iterator[pa.Table]:
    """Stream one file; yield one ROW_SCHEMA table per commit unit that is not fully committed.

    `committed` is a `CommittedState`, or (the older form) the ids of fully committed units.
    Never raises for bad records or a broken stream: those become error rows
    (a broken stream ends the file with one `read_error` row at the next position).
    """
    if rows_per_unit < 1:
        raise ValueError("rows_per_unit must be >= 1")
    if not isinstance(committed, CommittedState):
        committed = CommittedState.from_unit_ids(src, committed)
    units = UnitBuilder(src, rows_per_unit, committed)
    cursor = Cursor(total=src.size)
    try:
        raw = transport.open_raw(src.uri)
    except Exception as exc:
        yield from _read_error(units, src, 0, f"cannot open {src.uri}: {describe(exc)}", max(src.size, 0), 0)
        return

    high = [0]

    def tell() -> int:
        try:
            high[0] = max(high[0], int(raw.tell()))
        except Exception:
            pass
        return high[0]

    spooled = None
    try:
        try:
            read, needs_random_access = reader_for(src.format)
            if not needs_random_access:
                stream = decompressed(raw, src.compression)
            elif not src.compression and transport.random_access(raw, src.uri):
                stream = raw
            else:  # a compressed file, or an HTTP server ignoring range requests: a local copy
                if not src.compression:
                    raw.close()
                    raw = transport.open_raw(src.uri)
                stream = spooled = transport.spool(decompressed(raw, src.compression))
                if src.size < 0:
                    cursor.total = tell()
            yield from read(stream, src, cfg, units, tell, cursor)
        except Exception as exc:
            pos = cursor.pos + 1
            where = f"after position {pos - 1}" if pos > 0 else "at the start"
            at = cursor.offset(pos) if cursor.offset else tell()
            yield from _read_error(units, src, pos, f"read failed {where}: {describe(exc)}", _total(cursor, tell), at)
            return
        yield from units.finish(_total(cursor, tell))
    finally:
        for f in (spooled, raw):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


def _total(cursor: Cursor, tell: Callable[[], int]) -> int:
    return cursor.total if cursor.total >= 0 else tell()  # unknown size: what was consumed


def _read_error(units: UnitBuilder, src: SourceFile, position: int, message: str, total: int, offset: int) -> Iterator[pa.Table]:
    if position >= units.boundary:
        yield from units.enter(position, offset)
    if not units.cur_skipped:
        units.rows.append((f"{src.uri}#{position}", position, None, READ_ERROR, clean(message)))
    yield from units.finish(total)

