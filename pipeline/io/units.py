"""Grouping the rows of one file into commit units, and what of a file is already committed.

A unit is the set of rows whose `position // rows_per_unit` is equal; its id (`unit_id`) is
`<file key>-<unit number, 8 digits>`, stable across runs. `UnitBuilder` collects the rows a
format reader produces into one `ROW_SCHEMA` table per unit, leaves out the units that
`CommittedState` says are fully committed, and spreads the bytes read over the tables it
yields (for progress).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import pyarrow as pa

from pipeline.errors import ErrorKind
from pipeline.io.sources import SourceFile

__all__ = ["ROW_SCHEMA", "COVERS_TO_END", "CommittedState", "UnitBuilder", "unit_id"]

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
        # A read_error row stands for every row from its position on: COVERS_TO_END (-1).
        # Null on every other row (it stands for itself only).
        pa.field("covers_to", pa.int64(), nullable=True),
        # Rows (records) in the whole file: set on every row of the last table yielded for a
        # file that was read to its end without a read error; null elsewhere.
        pa.field("file_rows", pa.int64(), nullable=True),
    ]
)

COVERS_TO_END = -1

_READ_ERROR = ErrorKind.READ_ERROR.value

Row = tuple  # (row_id, position, text, error_kind, error_message)


def unit_id(src: SourceFile, position: int, rows_per_unit: int) -> str:
    return f"{src.key}-{position // rows_per_unit:08d}"


@dataclass(frozen=True)
class CommittedState:
    """What earlier attempts of a run committed of one file.

    `full_units`: numbers of the units whose every row is committed (the reader skips them);
    `ranges`: for partially committed units, the committed positions as inclusive
    [first, last] ranges (the reader still yields those units whole; the caller drops the
    committed rows, so that unit_rows stays the unit's size).
    """

    full_units: frozenset[int] = frozenset()
    ranges: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @classmethod
    def from_unit_ids(cls, src: SourceFile, unit_ids: Iterable[str]) -> "CommittedState":
        """From the ids of fully committed units (ids of other files are ignored)."""
        return cls(frozenset(n for n in (_unit_number(src, u) for u in unit_ids) if n is not None))

    @classmethod
    def from_resume(cls, src: SourceFile, done: Mapping[str, Mapping[str, Any]]) -> "CommittedState":
        """From the runner's resume state of one file: {unit id: {"full": bool, "ranges": [[first, last], ...]}}."""
        full, ranges = set(), {}
        for uid, d in done.items():
            n = _unit_number(src, uid)
            if n is None:
                continue
            if d.get("full"):
                full.add(n)
            elif d.get("ranges"):
                ranges[n] = tuple(sorted((int(a), int(b)) for a, b in d["ranges"]))
        return cls(frozenset(full), ranges)

    def first_uncommitted(self, position: int, rows_per_unit: int) -> int:
        """The first position >= `position` that is not committed (where a read error must land
        so that it is never hidden in a skipped unit or in rows the caller drops)."""
        p = max(0, position)
        while True:
            u = p // rows_per_unit
            if u in self.full_units:
                p = (u + 1) * rows_per_unit
                continue
            for first, last in self.ranges.get(u, ()):
                if first <= p <= last:
                    p = last + 1
                    break
            else:
                return p


def _unit_number(src: SourceFile, uid: Any) -> Optional[int]:
    prefix = src.key + "-"
    if isinstance(uid, str) and uid.startswith(prefix) and uid[len(prefix) :].isdigit():
        return int(uid[len(prefix) :])
    return None


class UnitBuilder:
    """Collects rows into units; decides which to yield and their bytes_read.

    Format readers append `Row` tuples to `rows` (a new list after every `enter`) and call
    `enter(position, offset)` when a position reaches `boundary`. A finished unit is yielded
    at once, unless some later unit of this file is to be skipped: then it is held until
    the next unit that is not skipped starts (or the file ends), so that the bytes of
    skipped units at the end of a file still land in a yielded table.
    """

    def __init__(self, src: SourceFile, rows_per_unit: int, committed: CommittedState):
        self.src = src
        self.rpu = rows_per_unit
        self.committed = committed
        self.skip = committed.full_units
        self.max_skip = max(self.skip, default=-1)
        self.cur = -1  # current unit number; -1 before the first record
        self.cur_skipped = False
        self.rows: list[Row] = []
        self.boundary = 0  # first position of the next unit
        self.held: tuple[int, list[Row], int] | None = None  # (unit, rows, end offset)
        self.last_cut = 0  # raw offset up to which bytes were reported

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

    def finish(self, total: int, file_rows: Optional[int] = None) -> list[pa.Table]:
        """End of file (or of what could be read): yield what is left; the last table gets the
        remaining bytes and, when given, the file's row count."""
        out: list[pa.Table] = []
        current = self.rows if (self.cur >= 0 and not self.cur_skipped and self.rows) else None
        if self.held is not None:
            unit, rows, end = self.held
            self.held = None
            if current is None:
                end = max(end, total)
            out.append(self._table(unit, rows, max(0, end - self.last_cut), file_rows if current is None else None))
            self.last_cut = max(self.last_cut, end)
        if current is not None:
            out.append(self._table(self.cur, current, max(0, max(total, self.last_cut) - self.last_cut), file_rows))
            self.last_cut = max(self.last_cut, total)
        self.rows = []
        return out

    def _table(self, unit: int, rows: list[Row], nbytes: int, file_rows: Optional[int] = None) -> pa.Table:
        n = len(rows)
        rids, positions, texts, kinds, messages = zip(*rows)
        uid = f"{self.src.key}-{unit:08d}"
        byte_col = [0] * n
        byte_col[0] = nbytes
        if _READ_ERROR in kinds:
            covers = pa.array([COVERS_TO_END if k == _READ_ERROR else None for k in kinds], pa.int64())
        else:
            covers = pa.nulls(n, pa.int64())
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
                covers,
                pa.nulls(n, pa.int64()) if file_rows is None else pa.array([file_rows] * n, pa.int64()),
            ],
            schema=ROW_SCHEMA,
        )
