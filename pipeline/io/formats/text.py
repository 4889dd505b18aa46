"""Plain text: one document per line; the position is the 0-based line number.

Lines end with \\n, \\r\\n or a lone \\r (classic Mac OS files): all three split lines.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import EMPTY, INVALID_TEXT, INVALID_UTF8, skip_bom, utf8_ok
from pipeline.io.sources import SourceFile
from pipeline.io.units import UnitBuilder


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor) -> Iterator[pa.Table]:
    uri = src.uri
    pos = -1
    rows = units.rows
    try:
        skip_bom(stream)
        # newline="": split on all three line ends, keep them (stripped below). Undecodable
        # bytes become lone surrogates (surrogateescape), reported per line.
        for line in io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline=""):
            pos += 1
            if pos >= units.boundary:
                yield from units.enter(pos, tell())
                rows = units.rows
            if units.cur_skipped:
                continue
            t = line.rstrip("\r\n")  # one line end: \n, \r\n or \r
            if t and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t)):
                rows.append((f"{uri}#{pos}", pos, t, None, None))
            elif not (t.isascii() or utf8_ok(t)):
                try:
                    t.encode("utf-8", "surrogateescape").decode("utf-8")
                    reason = "contains a lone surrogate (not valid Unicode)"
                except UnicodeDecodeError as e:
                    reason = f"invalid UTF-8 at byte {e.start}: {e.reason}"
                rows.append((f"{uri}#{pos}", pos, None, INVALID_UTF8, f"line {pos + 1}: {reason}"))
            elif "\x00" in t:
                rows.append((f"{uri}#{pos}", pos, None, INVALID_TEXT,
                             f"line {pos + 1}: contains a NUL (\\x00) character at offset {t.index(chr(0))}"))
            else:
                rows.append((f"{uri}#{pos}", pos, None, EMPTY,
                             f"line {pos + 1}: " + ("empty line" if not t else "the line holds only whitespace")))
        cursor.rows = pos + 1
    finally:
        cursor.pos = pos
