"""Plain text: one document per line; the position is the 0-based line number."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import EMPTY, INVALID_TEXT, INVALID_UTF8, skip_bom
from pipeline.io.sources import SourceFile
from pipeline.io.units import UnitBuilder


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor) -> Iterator[pa.Table]:
    uri = src.uri
    pos = -1
    rows = units.rows
    try:
        skip_bom(stream)
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
                rows.append((f"{uri}#{pos}", pos, None, INVALID_UTF8,
                             f"line {pos + 1}: invalid UTF-8 at byte {e.start}: {e.reason}"))
                continue
            if t and not t.isspace() and "\x00" not in t:
                rows.append((f"{uri}#{pos}", pos, t, None, None))
            elif "\x00" in t:
                rows.append((f"{uri}#{pos}", pos, None, INVALID_TEXT,
                             f"line {pos + 1}: contains a NUL (\\x00) character at offset {t.index(chr(0))}"))
            else:
                rows.append((f"{uri}#{pos}", pos, None, EMPTY,
                             f"line {pos + 1}: " + ("empty line" if not t else "the line holds only whitespace")))
    finally:
        cursor.pos = pos
