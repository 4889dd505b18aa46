"""One module per record format; each turns a byte stream into rows of `UnitBuilder`.

A format's `read(stream, src, cfg, units, tell, cursor)` is a generator of unit tables.
It appends one row per record to `units.rows` (re-read after every `units.enter`, which
starts a new list) and keeps `cursor.pos` at the last position read when it stops or
fails, so that `read_units` can place a read error after it. A reader that reaches the
end of its file sets `cursor.rows` to the number of rows the file holds.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Cursor", "FORMATS", "reader_for"]


@dataclass
class Cursor:
    """Where a format reader is in its file."""

    pos: int = -1  # the last position read (a failure lands after it)
    rows: Optional[int] = None  # rows in the whole file, once the reader reached its end
    total: int = -1  # the file's size in bytes for progress; -1: what was consumed
    offset: Optional[Callable[[int], int]] = None  # bytes attributed to the rows before a position (Parquet)


# name -> (module, needs random access: Parquet reads its footer first)
FORMATS = {
    "jsonl": ("jsonl", False),
    "csv": ("csv", False),
    "text": ("text", False),
    "parquet": ("parquet", True),
    "openai_batch": ("openai_batch", False),  # OpenAI batch request lines (the chat task)
}


def reader_for(name: str) -> tuple[Callable, bool]:
    """(read function, needs random access) of a format; modules load on first use."""
    if name not in FORMATS:
        raise OSError(f"unknown format {name!r}")
    module, random_access = FORMATS[name]
    return importlib.import_module(f"{__name__}.{module}").read, random_access
