"""JSON Lines: one JSON object per line; the position is the 0-based line number (blank
lines take a position but make no row). Lines end with \\n, \\r\\n or a lone \\r (the line
loop: pipeline/io/formats/lines.py)."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import INVALID_UTF8, MALFORMED, MISSING, fields_list, id_value, text_problem, utf8_ok
from pipeline.io.formats.lines import invalid_utf8, json_object, read_lines, salvage_id
from pipeline.io.sources import SourceFile
from pipeline.io.units import Row, UnitBuilder

_MISSING = object()


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor, scalars: bool = False) -> Iterator[pa.Table]:
    uri = src.uri
    text_field = cfg.text_field
    id_field = cfg.id_field
    missing = _MISSING

    def row(line: str, pos: int) -> Row:
        bad = invalid_utf8(line)
        if bad is not None:
            return (salvage_id(bad[0], id_field, json.loads) or f"{uri}#{pos}", pos, None, INVALID_UTF8,
                    f"line {pos + 1}: {bad[1]}")
        obj, why = json_object(line, f"line {pos + 1}: ")
        if why is not None:
            return (f"{uri}#{pos}", pos, None, MALFORMED, why)
        if id_field is None:
            rid = f"{uri}#{pos}"
        else:
            v = obj.get(id_field, missing)
            if type(v) is str and v and not v.isspace() and (v.isascii() or utf8_ok(v)):
                rid = v
            elif v is missing:
                return (f"{uri}#{pos}", pos, None, MISSING,
                        f"line {pos + 1}: id field '{id_field}' missing; fields present: {fields_list(obj)}")
            else:
                rid, kind, msg = id_value(v, id_field, f"line {pos + 1}: ")
                if rid is None:
                    return (f"{uri}#{pos}", pos, None, kind, msg)
        t = obj.get(text_field, missing)
        if type(t) is str and t and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t)):
            return (rid, pos, t, None, None)
        if t is missing:
            return (rid, pos, None, MISSING, f"line {pos + 1}: field '{text_field}' missing; fields present: {fields_list(obj)}")
        if scalars and type(t) in (int, float, bool):  # a gold label such as 1 or true
            return (rid, pos, json.dumps(t), None, None)
        kind, msg = text_problem(t, text_field, f"line {pos + 1}: ")
        return (rid, pos, None, kind, msg)

    return read_lines(stream, units, tell, cursor, row)
