"""The line loop of the line formats (JSON Lines, plain text, OpenAI batch files), and the
bad-line records they share.

The position of a line is its 0-based line number. Lines end with \\n, \\r\\n or a lone \\r
(classic Mac OS files): `newline=""` splits on all three and keeps them. JSON never holds a
raw \\r inside a string, so splitting there is safe for the JSON formats too. Undecodable
bytes become lone surrogates (surrogateescape) and are reported per line
(`invalid_utf8`), so that one bad line is one error record, never a failed file.
"""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa

from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import a, clean, json_type, skip_bom, utf8_ok
from pipeline.io.units import Row, UnitBuilder


def read_lines(
    stream: Any,
    units: UnitBuilder,
    tell: Callable[[], int],
    cursor: Cursor,
    row: Callable[[str, int], Row],
    blank_rows: bool = False,
    skipped: Optional[Callable[[str, int], Any]] = None,
) -> Iterator[pa.Table]:
    """Reads `stream` line by line into `units`: `row(line, pos)` is the row of one line (its
    line end kept). Blank lines take a position but make no row unless `blank_rows`. Lines
    of a unit that is skipped (done in an earlier attempt) make no row; `skipped(line, pos)`
    still sees them (a format whose rows depend on earlier lines: duplicate ids)."""
    pos = -1
    n_rows = 0
    rows = units.rows
    try:
        skip_bom(stream)
        for line in io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline=""):
            pos += 1
            if pos >= units.boundary:
                yield from units.enter(pos, tell())
                rows = units.rows
            if not blank_rows and line.isspace():
                continue  # a blank line: a position, but not a record
            n_rows += 1
            if units.cur_skipped:
                if skipped is not None:
                    skipped(line, pos)
                continue
            rows.append(row(line, pos))
        cursor.rows = n_rows
    finally:
        cursor.pos = pos


def invalid_utf8(line: str) -> Optional[tuple[bytes, str]]:
    """(the line's bytes, what is wrong) where a line read with surrogateescape is not valid
    UTF-8; None where it is."""
    if line.isascii() or utf8_ok(line):
        return None
    raw = line.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return raw, f"invalid UTF-8 at byte {e.start}: {e.reason}"
    return None


def json_object(line: str, where: str, what: str = "a JSON object") -> tuple[Any, Optional[str]]:
    """(the JSON object on `line`, None), or (None, why not) for a malformed_record: not JSON,
    or JSON that is not an object. `where` starts the message ('line 3: ')."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        msg = getattr(e, "msg", None) or str(e) or type(e).__name__
        col = getattr(e, "colno", None)
        return None, clean(f"{where}invalid JSON: {msg}" + (f" (column {col})" if col else ""))
    if type(obj) is not dict:
        return None, f"{where}expected {what}, got {a(json_type(obj))}"
    return obj, None


def salvage_id(line: bytes, id_field: Optional[str], loads: Callable[[str], Any]) -> Optional[str]:
    """The id of a JSON line whose bytes are not all UTF-8 (the bad bytes are usually in the
    text), so that its error record carries the id the user knows."""
    if id_field is None:
        return None
    try:
        obj = loads(line.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    v = obj.get(id_field) if type(obj) is dict else None
    if type(v) is int:
        return str(v)
    if type(v) is str and v.strip() and utf8_ok(v):
        return v
    return None
