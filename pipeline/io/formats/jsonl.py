"""JSON Lines: one JSON object per line; the position is the 0-based line number (blank
lines take a position but make no row). Lines end with \\n, \\r\\n or a lone \\r."""

from __future__ import annotations

import io
import json
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import (
    INVALID_UTF8,
    MALFORMED,
    MISSING,
    a,
    clean,
    fields_list,
    id_value,
    json_type,
    skip_bom,
    text_problem,
    utf8_ok,
)
from pipeline.io.sources import SourceFile
from pipeline.io.units import UnitBuilder

_MISSING = object()


def _salvage_id(line: bytes, id_field: Optional[str], loads: Callable[[str], Any]) -> Optional[str]:
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


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor, scalars: bool = False) -> Iterator[pa.Table]:
    uri = src.uri
    text_field = cfg.text_field
    id_field = cfg.id_field
    loads = json.loads
    missing = _MISSING
    pos = -1
    n_rows = 0
    rows = units.rows
    try:
        skip_bom(stream)
        # Lines end with \n, \r\n or a lone \r: JSON never holds a raw \r inside a string, so
        # splitting there is safe, and a file with classic Mac line ends reads as lines.
        # Undecodable bytes become lone surrogates (surrogateescape), found per line below.
        for line in io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline=""):
            pos += 1
            if pos >= units.boundary:
                yield from units.enter(pos, tell())
                rows = units.rows
            if line.isspace():
                continue  # a blank line: a position, but not a record
            n_rows += 1
            if units.cur_skipped:
                continue
            if not (line.isascii() or utf8_ok(line)):
                raw = line.encode("utf-8", "surrogateescape")
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    rows.append((_salvage_id(raw, id_field, loads) or f"{uri}#{pos}", pos, None, INVALID_UTF8,
                                 f"line {pos + 1}: invalid UTF-8 at byte {e.start}: {e.reason}"))
                    continue
            try:
                obj = loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
                msg = getattr(e, "msg", None) or str(e) or type(e).__name__
                col = getattr(e, "colno", None)
                at = f" (column {col})" if col else ""
                rows.append((f"{uri}#{pos}", pos, None, MALFORMED, clean(f"line {pos + 1}: invalid JSON: {msg}{at}")))
                continue
            if type(obj) is not dict:
                rows.append((f"{uri}#{pos}", pos, None, MALFORMED,
                             f"line {pos + 1}: expected a JSON object, got {a(json_type(obj))}"))
                continue
            if id_field is None:
                rid = f"{uri}#{pos}"
            else:
                v = obj.get(id_field, missing)
                if type(v) is str and v and not v.isspace() and (v.isascii() or utf8_ok(v)):
                    rid = v
                elif v is missing:
                    rows.append((f"{uri}#{pos}", pos, None, MISSING,
                                 f"line {pos + 1}: id field '{id_field}' missing; fields present: {fields_list(obj)}"))
                    continue
                else:
                    rid, kind, msg = id_value(v, id_field, f"line {pos + 1}: ")
                    if rid is None:
                        rows.append((f"{uri}#{pos}", pos, None, kind, msg))
                        continue
            t = obj.get(text_field, missing)
            if type(t) is str and t and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t)):
                rows.append((rid, pos, t, None, None))
            elif t is missing:
                rows.append((rid, pos, None, MISSING,
                             f"line {pos + 1}: field '{text_field}' missing; fields present: {fields_list(obj)}"))
            elif scalars and type(t) in (int, float, bool):  # a gold label such as 1 or true
                rows.append((rid, pos, json.dumps(t), None, None))
            else:
                kind, msg = text_problem(t, text_field, f"line {pos + 1}: ")
                rows.append((rid, pos, None, kind, msg))
        cursor.rows = n_rows
    finally:
        cursor.pos = pos
