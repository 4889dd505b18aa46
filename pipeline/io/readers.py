"""Streaming one input file into commit units of rows: the public entry point of reading.

`read_units` reads a file sequentially (never whole), turns every record into exactly one
row of `ROW_SCHEMA` (good rows carry `text`; bad rows carry `error_kind` and a readable
`error_message` instead) and yields one Arrow table per commit unit. A unit is the set of
rows whose `position // rows_per_unit` is equal; its id is `unit_id(...)`, stable across
runs. The parts, one concept each:

    transport.py     the raw bytes of a file (local, s3://, gs://, http(s)://): timeouts,
                     bounded retries with backoff, resume at a byte offset
    compression.py   gzip, bz2, zstd on top of them
    formats/         one module per record format: jsonl, csv, text, parquet
    units.py         rows into unit tables, ROW_SCHEMA, what is already committed

The contract with the commit side (what a caller may rely on)
-------------------------------------------------------------
Rows. Every record of the file that is read becomes exactly one row, at its position (the
0-based record number; for JSONL and text the line number, blank JSONL lines taking a
position but making no row). `unit_rows` is the number of rows in the table yielded for the
unit. A resumed run passes `committed` (a `CommittedState`: the fully committed units,
and the committed [first, last] position ranges of partially committed ones). Fully
committed units are not yielded; partially committed ones are yielded whole (the caller
drops the committed rows, keeping `unit_rows`, which counts the unit's rows).

Read errors. When the stream cannot be read from position p on (cannot be opened, breaks
in the middle after the transport's retries, decompression fails), the reader yields the
rows before p that it read, then ONE row with `error_kind = read_error` that stands for
every row from there to the end of the file: `covers_to = -1` (COVERS_TO_END) and the
message "rows from position q to the end of the file could not be read: <cause>". Its
position q is the first position >= p that `committed` does not hold, so it is never hidden
in a skipped unit or among rows the caller drops: on a resumed run, a file that became
unreadable still produces its error. (q may lie past the file's real end when everything
after p was committed; then the error covers no row, and the commit side knows it from the
file's row count, below.) `covers_to` is null on every other row, error or not: such a row
stands for itself only. A unit holding a committed read_error row is not complete: the
commit side must not pass it as fully committed (only the ranges before the error row), so
that the next attempt reads on from there and the old error record is replaced.

Row count. When the file was read to its end without a read error, every row of the LAST
table yielded for the file carries `file_rows`: the number of rows the whole file holds
(records; blank JSONL lines do not count), committed before or not; null on all other rows.
The commit side records it with the part that commits such a row, so a run can prove that
every row of every file is covered (committed rows of the file == file_rows, by position).
If nothing is yielded, either the file holds no record (nothing committed, no error), or
every unit was committed before: then the count was recorded when the table that carried it
was first committed (the last table of a complete read always carries it, whatever was
skipped), or, if that never happened (earlier reads all failed), the file must be read again
without `committed` to learn it.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.errors import INPUT_KINDS
from pipeline.io import transport
from pipeline.io.compression import decompressed
from pipeline.io.formats import Cursor, reader_for
from pipeline.io.formats.fields import READ_ERROR, clean, describe
from pipeline.io.sources import SourceFile
from pipeline.io.units import COVERS_TO_END, ROW_SCHEMA, CommittedState, UnitBuilder, unit_id

__all__ = ["ROW_SCHEMA", "COVERS_TO_END", "ERROR_KINDS", "CommittedState", "unit_id", "read_units"]

# The error kinds a reader produces (the values of pipeline.errors.INPUT_KINDS).
ERROR_KINDS = frozenset(k.value for k in INPUT_KINDS)


def read_units(
    src: SourceFile,
    cfg: InputConfig,
    rows_per_unit: int,
    committed: CommittedState | Iterable[str] = CommittedState(),
    scalars: bool = False,
) -> Iterator[pa.Table]:
    """Stream one file; yield one ROW_SCHEMA table per commit unit that is not fully committed.

    `committed` is a `CommittedState`, or (the older form) the ids of fully committed units.
    Never raises for bad records or a broken stream: those become error rows (see the module
    docstring for the read_error row and the file's row count). `scalars=True` takes numbers
    and booleans in the text field as their JSON text ("1", "true"): for reading gold labels
    to evaluate against (pipeline.eval), never for text sent to a model.
    """
    if rows_per_unit < 1:
        raise ValueError("rows_per_unit must be >= 1")
    if not isinstance(committed, CommittedState):
        committed = CommittedState.from_unit_ids(src, committed)
    # Each table is held back until the next one comes: a file may end in units that hold no
    # row (blank JSONL lines), and then no table is left at the end to carry the row count.
    end: dict[str, int] = {}
    last = None
    for table in _read_units(src, cfg, rows_per_unit, committed, end, scalars):
        if last is not None:
            yield last
        last = table
    if last is not None:
        if "file_rows" in end and last["file_rows"].null_count:
            i = last.schema.get_field_index("file_rows")
            last = last.set_column(i, "file_rows", pa.array([end["file_rows"]] * last.num_rows, pa.int64()))
        yield last


def _read_units(src: SourceFile, cfg: InputConfig, rows_per_unit: int, committed: CommittedState,
                end: dict[str, int], scalars: bool = False) -> Iterator[pa.Table]:
    units = UnitBuilder(src, rows_per_unit, committed)
    cursor = Cursor(total=src.size)
    try:
        raw = transport.open_raw(src.uri, transport.RetryPolicy.of(cfg))
    except Exception as exc:
        yield from _read_error(units, 0, f"cannot open {_cause(exc, src)}", max(src.size, 0), 0)
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
            if scalars and src.format in ("jsonl", "parquet"):  # CSV and text fields are always strings
                read = functools.partial(read, scalars=True)
            if not needs_random_access:
                stream = decompressed(raw, src.compression)
            else:
                stream = None if src.compression else transport.random_access_view(raw)
                if stream is None:  # compressed, or a server ignoring range requests: a local copy
                    stream = spooled = transport.spool(decompressed(raw, src.compression))
                    if src.size < 0:
                        cursor.total = tell()
            yield from read(stream, src, cfg, units, tell, cursor)
        except Exception as exc:
            p = cursor.pos + 1
            where = f"after position {p - 1}" if p > 0 else "at the start"
            at = cursor.offset(p) if cursor.offset else tell()
            yield from _read_error(units, p, f"the read failed {where}: {_cause(exc, src)}", _total(cursor, tell), at)
            return
        end["file_rows"] = cursor.rows
        yield from units.finish(_total(cursor, tell), file_rows=cursor.rows)
    finally:
        for f in (spooled, raw):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass


def _cause(exc: BaseException, src: SourceFile) -> str:
    if isinstance(exc, transport.ReadFailed):
        return clean(str(exc))  # says which file, what failed and how often it was tried
    return f"{src.uri}: {describe(exc)}"


def _total(cursor: Cursor, tell: Callable[[], int]) -> int:
    return cursor.total if cursor.total >= 0 else tell()  # unknown size: what was consumed


def _read_error(units: UnitBuilder, position: int, cause: str, total: int, offset: int) -> Iterator[pa.Table]:
    """The rows from `position` on cannot be read: one read_error row stands for them, at the
    first position not committed yet (so that no skipped unit or dropped range hides it)."""
    q = units.committed.first_uncommitted(position, units.rpu)
    if q >= units.boundary:
        yield from units.enter(q, offset)
    message = f"rows from position {q} to the end of the file could not be read: {cause}"
    units.rows.append((f"{units.src.uri}#{q}", q, None, READ_ERROR, clean(message)))
    yield from units.finish(total)
