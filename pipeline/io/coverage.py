"""The proof a publish needs: every record of every input file is held exactly once.

Pure functions over commit records (no I/O), so that they can be tested over random part
layouts. Coverage is counted in row *positions*, never in batches: a part says which
positions it holds (ranges), so any batch size, actor count or number of batches in
flight gives the same proof, including values changed between a killed run and its rerun.

Per input file, a publish accepts either
- the file's record count N (known from a read that reached its end: a `FileRecord` of
  the read stage, or `file_rows` in a part) and N distinct positions held, read errors
  standing for the positions nobody holds (each from its position on); or
- no record count (the file could never be read to its end) and read errors: then every
  commit unit before the first read error must be whole.
Anything else fails the publish with a message naming the file and what is missing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional

from pipeline.io.ranges import RangeSet
from pipeline.io.records import PartRecord


@dataclass
class FileCoverage:
    """What the parts (and the rows kept from the published version) hold of one input file."""

    source: str
    file_rows: Optional[int]  # records in the file, when known
    positions: RangeSet  # every position holding a row (a result, an error record or a read error)
    read_errors: list[tuple[int, int]]  # (position, covers_to) of the read errors in force
    read_error_rows: int  # records the read errors stand for (their own rows included); a lower bound if not known

    @property
    def rows(self) -> int:
        return len(self.positions)

    @property
    def input_rows(self) -> int:
        """Records of the file accounted for: rows held, plus what read errors stand for."""
        return self.rows - len(self.read_errors) + self.read_error_rows

    @property
    def extent_known(self) -> bool:
        return self.file_rows is not None or not self.read_errors


@dataclass
class Overlaps:
    """Parts that hold rows another part holds too (a batch retried with other boundaries,
    a zombie writer): which to drop whole, and which to trim to their new rows."""

    keep: list[PartRecord] = field(default_factory=list)
    drop: list[PartRecord] = field(default_factory=list)
    trim: list[tuple[PartRecord, RangeSet]] = field(default_factory=list)  # (part, positions to remove)


def resolve_overlaps(parts: Iterable[PartRecord], held: Optional[dict[str, RangeSet]] = None) -> Overlaps:
    """First committed wins, position by position, except that a read error gives way to any
    row that holds its position (a later attempt that could read the file again replaces
    it). `held`: positions already published per file (kept by this publish), which no
    part may hold again."""
    out = Overlaps()
    taken: dict[str, RangeSet] = defaultdict(RangeSet, {k: v for k, v in (held or {}).items()})
    remove: dict[str, RangeSet] = defaultdict(RangeSet)
    order = []
    retried: dict[str, RangeSet] = defaultdict(RangeSet)
    for p in sorted(parts, key=lambda p: (p.committed_at, p.key)):
        if p.tasks is None:
            order.append(p)
            continue
        # retry parts add tasks to rows that are held already: they overlap only each other
        dup = p.position_set() & retried[p.source]
        if not dup:
            out.keep.append(p)
        elif dup == p.position_set():
            out.drop.append(p)
        else:
            out.trim.append((p, dup))
        retried[p.source] = retried[p.source] | p.position_set()
    for p in order:
        real = p.position_set() - RangeSet.of(e[0] for e in p.read_errors)
        dup = real & taken[p.source]
        if dup:
            remove[p.key] = remove[p.key] | dup
        taken[p.source] = taken[p.source] | real
    for p in order:
        for q, _ in p.read_errors:
            if q in taken[p.source]:
                remove[p.key] = remove[p.key] | RangeSet([(q, q)])
            else:
                taken[p.source] = taken[p.source] | RangeSet([(q, q)])
    for p in order:
        gone = remove.get(p.key)
        if not gone:
            out.keep.append(p)
        elif gone == p.position_set():
            out.drop.append(p)
        else:
            out.trim.append((p, gone))
    return out


def check_file(
    source: str,
    parts: list[PartRecord],
    file_rows: Optional[int] = None,
    held: RangeSet = RangeSet(),
    held_read_errors: Iterable[tuple[int, int]] = (),
) -> tuple[Optional[FileCoverage], Optional[str]]:
    """(coverage, None) if the file is whole, else (None, what is wrong)."""
    parts = [p for p in parts if p.tasks is None]
    positions = RangeSet(held)
    rows = len(positions)
    for p in sorted(parts, key=lambda p: p.positions[0][0] if p.positions else -1):
        mine = p.position_set()
        if len(mine) != p.rows:
            return None, f"{source}: part {p.key} says {p.rows} rows but lists {len(mine)} positions"
        if positions.overlaps(mine):
            return None, f"{source}: part {p.key} holds rows held elsewhere too"
        positions = positions | mine
        rows += p.rows
    read_errors = sorted(set(map(tuple, held_read_errors)) | {tuple(e) for p in parts for e in p.read_errors})
    counts = {p.file_rows for p in parts if p.file_rows is not None} | ({file_rows} if file_rows is not None else set())
    if len(counts) > 1:
        return None, f"{source}: reads disagree on its record count ({sorted(counts)}): the file changed while this run read it"
    n = counts.pop() if counts else None
    errors = len(read_errors)
    if n is not None:
        held_records = rows - errors  # read error rows may sit past the last record
        if held_records > n:
            return None, f"{source}: {held_records} rows held for {n} records"
        if not read_errors and rows != n:
            return None, f"{source}: {n - rows} of its {n} records are missing"
        covered = n - held_records
        return FileCoverage(source, n, positions, read_errors, covered), None
    if not read_errors:
        if not parts and not held:
            return None, f"{source}: nothing of it was committed"
        return None, f"{source}: it was not read to its end (its record count is unknown and no read error says why)"
    # No record count: the units before the first read error must be whole.
    first_error = read_errors[0][0]
    by_unit: dict[str, list[PartRecord]] = defaultdict(list)
    for p in parts:
        by_unit[p.unit].append(p)
    for unit, ps in sorted(by_unit.items()):
        if any(e[0] <= first_error for p in ps for e in p.read_errors):
            continue
        if max(b for p in ps for _, b in p.positions) >= first_error:
            continue
        expected = max(p.unit_rows for p in ps)
        got = sum(p.rows for p in ps)
        if got != expected:
            return None, f"{source}: unit {unit} has {got} of its {expected} rows"
    return FileCoverage(source, None, positions, read_errors, errors), None


def check_selected(source: str, parts: list[PartRecord], selected: RangeSet) -> Optional[str]:
    """A retry of chosen rows: its parts must hold exactly those positions."""
    got = RangeSet()
    for p in parts:
        if p.tasks is None:
            continue
        mine = p.position_set()
        if got.overlaps(mine):
            return f"{source}: retry part {p.key} holds rows another part holds too"
        got = got | mine
    if got != selected:
        missing, extra = len(selected - got), len(got - selected)
        return f"{source}: the retry holds {len(got)} of the {len(selected)} rows it had to recompute ({missing} missing, {extra} unexpected)"
    return None


def full_units(parts: Iterable[PartRecord]) -> dict[str, dict[str, dict]]:
    """Resume state per input file, per unit: is it whole (the reader can skip it) and which
    positions of it are committed (the read stage drops them). A unit that holds a read
    error is never whole (its `unit_rows` came from a read that broke inside it), and the
    error's own position is not passed as committed: the next attempt reads on from there,
    and its rows replace the error (`resolve_overlaps`)."""
    by_unit: dict[tuple[str, str], list[PartRecord]] = defaultdict(list)
    for p in parts:
        by_unit[(p.source, p.unit)].append(p)
    state: dict[str, dict[str, dict]] = defaultdict(dict)
    for (source, unit), ps in by_unit.items():
        held = RangeSet()
        for p in ps:  # a read error's row is not held: the next attempt reads on from there
            held = held | (p.position_set() - RangeSet.of(e[0] for e in p.read_errors))
        clean = [p.unit_rows for p in ps if not p.read_errors and p.tasks is None]
        whole = bool(clean) and not any(p.read_errors for p in ps) and len(held) == max(clean)
        state[source][unit] = {"full": whole, "ranges": held.ranges()}
    return state
