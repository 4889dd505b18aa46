"""Plain text: one document per line; the position is the 0-based line number.

Lines end with \\n, \\r\\n or a lone \\r (classic Mac OS files): all three split lines
(the line loop: pipeline/io/formats/lines.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import EMPTY, INVALID_TEXT, INVALID_UTF8, utf8_ok
from pipeline.io.formats.lines import invalid_utf8, read_lines
from pipeline.io.sources import SourceFile
from pipeline.io.units import Row, UnitBuilder


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor) -> Iterator[pa.Table]:
    uri = src.uri

    def row(line: str, pos: int) -> Row:
        t = line.rstrip("\r\n")  # one line end: \n, \r\n or \r
        if t and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t)):
            return (f"{uri}#{pos}", pos, t, None, None)
        if not (t.isascii() or utf8_ok(t)):
            bad = invalid_utf8(t)
            reason = "contains a lone surrogate (not valid Unicode)" if bad is None else bad[1]
            return (f"{uri}#{pos}", pos, None, INVALID_UTF8, f"line {pos + 1}: {reason}")
        if "\x00" in t:
            return (f"{uri}#{pos}", pos, None, INVALID_TEXT,
                    f"line {pos + 1}: contains a NUL (\\x00) character at offset {t.index(chr(0))}")
        return (f"{uri}#{pos}", pos, None, EMPTY, f"line {pos + 1}: " + ("empty line" if not t else "the line holds only whitespace"))

    # Blank lines are rows here: an empty document is an error record of its own.
    return read_lines(stream, units, tell, cursor, row, blank_rows=True)
