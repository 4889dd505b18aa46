"""CSV with a header row; the position is the 0-based record number (blank lines are not records)."""

from __future__ import annotations

import csv
import io
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import INVALID_UTF8, MALFORMED, MISSING, clean, fields_list, text_problem, utf8_ok
from pipeline.io.sources import SourceFile
from pipeline.io.units import UnitBuilder

CSV_FIELD_LIMIT = 128 * 1024 * 1024  # a single CSV field may be up to 128 MiB


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor) -> Iterator[pa.Table]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    uri = src.uri
    text_field = cfg.text_field
    id_field = cfg.id_field
    text_stream = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text_stream, delimiter=cfg.csv_delimiter)
    pos = -1
    try:
        try:
            header = next(reader)
        except StopIteration:
            return  # empty file: no records
        except csv.Error as e:
            raise OSError(f"cannot parse the CSV header: {e}") from e
        ncols = len(header)
        ti = header.index(text_field) if text_field in header else None
        ii = (header.index(id_field) if id_field in header else None) if id_field else None
        present = fields_list(header)
        missing_text = f"column '{text_field}' missing; columns present: {present}"
        missing_id = f"id column '{id_field}' missing; columns present: {present}"
        rows = units.rows
        while True:
            try:
                for rec in reader:
                    if not rec:
                        continue  # blank line: not a record
                    pos += 1
                    if pos >= units.boundary:
                        yield from units.enter(pos, tell())
                        rows = units.rows
                    if units.cur_skipped:
                        continue
                    if len(rec) != ncols:
                        rows.append((f"{uri}#{pos}", pos, None, MALFORMED,
                                     f"CSV record {pos} (line {reader.line_num}): {len(rec)} fields, but the header has {ncols}"))
                        continue
                    if id_field is None:
                        rid = f"{uri}#{pos}"
                    else:
                        v = rec[ii] if ii is not None else None
                        if v and not v.isspace() and (v.isascii() or utf8_ok(v)):
                            rid = v
                        else:
                            where = f"CSV record {pos} (line {reader.line_num}): "
                            if v is None:
                                rows.append((f"{uri}#{pos}", pos, None, MISSING, where + missing_id))
                            elif not v or v.isspace():
                                rows.append((f"{uri}#{pos}", pos, None, MISSING, f"{where}id field '{id_field}' is empty"))
                            else:
                                rows.append((f"{uri}#{pos}", pos, None, INVALID_UTF8,
                                             f"{where}id field '{id_field}' is not valid UTF-8"))
                            continue
                    if ti is None:
                        rows.append((rid, pos, None, MISSING, f"CSV record {pos} (line {reader.line_num}): {missing_text}"))
                        continue
                    t = rec[ti]
                    if t and not t.isspace() and "\x00" not in t and (t.isascii() or utf8_ok(t)):
                        rows.append((rid, pos, t, None, None))
                    else:
                        kind, msg = text_problem(t, text_field, f"CSV record {pos} (line {reader.line_num}): ",
                                                 surrogate_kind=INVALID_UTF8)
                        rows.append((rid, pos, None, kind, msg))
                break
            except csv.Error as e:  # a record the csv module cannot parse; the reader goes on after it
                pos += 1
                if pos >= units.boundary:
                    yield from units.enter(pos, tell())
                    rows = units.rows
                if not units.cur_skipped:
                    rows.append((f"{uri}#{pos}", pos, None, MALFORMED, clean(f"CSV record {pos} (line {reader.line_num}): {e}")))
    finally:
        cursor.pos = pos
