"""Sets of row positions as sorted, disjoint, inclusive [first, last] ranges.

Commit records, the manifest and resume state describe which positions of an input file
they hold this way: a part of contiguous rows is one range whatever its size, and a
resumed batch that spans a gap (rows committed out of order by batches in flight) is two.
"""

from __future__ import annotations

import bisect
from typing import Iterable, Iterator, Sequence

Range = tuple[int, int]


class RangeSet:
    __slots__ = ("_r",)

    def __init__(self, ranges: Iterable[Sequence[int]] = ()):
        self._r: list[Range] = _normalize((int(a), int(b)) for a, b in ranges)

    @classmethod
    def of(cls, positions: Iterable[int]) -> "RangeSet":
        out: list[Range] = []
        for p in sorted(set(int(p) for p in positions)):
            if out and p == out[-1][1] + 1:
                out[-1] = (out[-1][0], p)
            else:
                out.append((p, p))
        rs = cls()
        rs._r = out
        return rs

    # -- queries ----------------------------------------------------------------------
    def ranges(self) -> list[list[int]]:
        return [[a, b] for a, b in self._r]

    def __iter__(self) -> Iterator[Range]:
        return iter(self._r)

    def __len__(self) -> int:
        """Positions in the set (not ranges)."""
        return sum(b - a + 1 for a, b in self._r)

    def __bool__(self) -> bool:
        return bool(self._r)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._r == other._r

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()})"

    def __contains__(self, p: int) -> bool:
        i = bisect.bisect_right(self._r, (p, float("inf"))) - 1
        return i >= 0 and self._r[i][0] <= p <= self._r[i][1]

    def first(self) -> int:
        return self._r[0][0]

    def last(self) -> int:
        return self._r[-1][1]

    def count_in(self, first: int, last: int) -> int:
        """Positions of the set within [first, last]."""
        n = 0
        for a, b in self._r:
            lo, hi = max(a, first), min(b, last)
            if lo <= hi:
                n += hi - lo + 1
        return n

    def overlaps(self, other: "RangeSet") -> bool:
        return bool(self & other)

    # -- algebra ----------------------------------------------------------------------
    def __or__(self, other: "RangeSet") -> "RangeSet":
        return RangeSet(list(self._r) + list(other._r))

    def __and__(self, other: "RangeSet") -> "RangeSet":
        out, i, j = [], 0, 0
        a, b = self._r, other._r
        while i < len(a) and j < len(b):
            lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
            if lo <= hi:
                out.append((lo, hi))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return RangeSet(out)

    def __sub__(self, other: "RangeSet") -> "RangeSet":
        out: list[Range] = []
        j = 0
        o = other._r
        for a, b in self._r:
            cur = a
            while j < len(o) and o[j][1] < cur:
                j += 1
            k = j
            while k < len(o) and o[k][0] <= b:
                if o[k][0] > cur:
                    out.append((cur, o[k][0] - 1))
                cur = max(cur, o[k][1] + 1)
                if cur > b:
                    break
                k += 1
            if cur <= b:
                out.append((cur, b))
        rs = RangeSet()
        rs._r = out
        return rs

    def split(self, size: int) -> dict[int, "RangeSet"]:
        """The set cut at multiples of `size`: {block number: its positions} (commit units)."""
        out: dict[int, list[Range]] = {}
        for a, b in self._r:
            while a <= b:
                blk = a // size
                end = min(b, (blk + 1) * size - 1)
                out.setdefault(blk, []).append((a, end))
                a = end + 1
        result = {}
        for blk, rs in out.items():
            r = RangeSet()
            r._r = rs
            result[blk] = r
        return result


def _normalize(ranges: Iterable[Range]) -> list[Range]:
    out: list[Range] = []
    for a, b in sorted(r for r in ranges if r[0] <= r[1]):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
