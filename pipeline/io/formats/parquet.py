"""Parquet, streamed by row group; the position is the 0-based row number.

Needs random access (the footer is read first): `read_units` hands it a seekable stream,
a temporary copy when the file is compressed or its server ignores range requests.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import INVALID_UTF8, MALFORMED, MISSING, fields_list, id_value, text_ok, text_problem
from pipeline.io.sources import SourceFile
from pipeline.io.units import UnitBuilder

_BATCH = 8192


def _is_text_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))
    )


def read(raw: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor, scalars: bool = False) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    pos = -1
    try:
        pf = pq.ParquetFile(raw)
        meta = pf.metadata
        n_total = meta.num_rows
        size = src.size if src.size >= 0 else cursor.total  # unknown: the spooled compressed size, if any
        if size < 0:  # else the file's own
            try:
                size = int(raw.seek(0, io.SEEK_END))
            except Exception:
                size = 0
        cursor.total = size

        def offset(position: int) -> int:  # bytes attributed to the rows before `position`
            return size * position // n_total if n_total else size

        cursor.offset = offset
        uri = src.uri
        names = pf.schema_arrow.names
        text_field, id_field = cfg.text_field, cfg.id_field
        has_text = text_field in names
        has_id = id_field is not None and id_field in names
        present = fields_list(names)
        text_type = pf.schema_arrow.field(text_field).type if has_text else None
        bad_type = text_type is not None and not _is_text_type(text_type)
        # scalars: a numeric or boolean column read as text (gold labels such as 1/0)
        cast_text = scalars and bad_type and (
            pa.types.is_integer(text_type) or pa.types.is_floating(text_type) or pa.types.is_boolean(text_type)
        )
        bad_type = bad_type and not cast_text
        columns = [c for c in (text_field if has_text else None, id_field if has_id else None) if c]
        rpu = units.rpu
        start = 0
        for rg in range(meta.num_row_groups):
            rg_rows = meta.row_group(rg).num_rows
            first, last = start, start + rg_rows - 1
            start += rg_rows
            if rg_rows <= 0:
                continue
            if all(u in units.skip for u in range(first // rpu, last // rpu + 1)):
                # every unit of this row group was committed already: move past it unread
                if first >= units.boundary:
                    yield from units.enter(first, offset(first))
                if last >= units.boundary:
                    yield from units.enter(last, offset(last // rpu * rpu))
                pos = last
                continue
            if columns:
                batches = pf.iter_batches(batch_size=_BATCH, row_groups=[rg], columns=columns, use_threads=False)
            else:
                batches = [pa.record_batch([pa.nulls(rg_rows)], names=["_"])]
            for batch in batches:
                texts = None
                if has_text and not bad_type:
                    col = batch.column(text_field)
                    texts = (col.cast(pa.string()) if cast_text else col).to_pylist()
                ids = batch.column(id_field).to_pylist() if has_id else None
                rows = units.rows
                for i in range(batch.num_rows):
                    pos += 1
                    if pos >= units.boundary:
                        yield from units.enter(pos, offset(pos))
                        rows = units.rows
                    if units.cur_skipped:
                        continue
                    if id_field is None:
                        rid = f"{uri}#{pos}"
                    elif not has_id:
                        rows.append((f"{uri}#{pos}", pos, None, MISSING,
                                     f"row {pos}: id column '{id_field}' missing; columns present: {present}"))
                        continue
                    else:
                        rid, kind, msg = id_value(ids[i], id_field, f"row {pos}: ")  # type: ignore[index]
                        if rid is None:
                            rows.append((f"{uri}#{pos}", pos, None, kind, msg))
                            continue
                    if texts is None:
                        if not has_text:
                            rows.append((rid, pos, None, MISSING,
                                         f"row {pos}: column '{text_field}' missing; columns present: {present}"))
                        else:
                            rows.append((rid, pos, None, MALFORMED,
                                         f"row {pos}: column '{text_field}' has type {text_type}, expected string"))
                        continue
                    t = texts[i]
                    if type(t) is bytes:
                        try:
                            t = t.decode("utf-8")
                        except UnicodeDecodeError as e:
                            rows.append((rid, pos, None, INVALID_UTF8,
                                         f"row {pos}: field '{text_field}': invalid UTF-8 at byte {e.start}: {e.reason}"))
                            continue
                    if text_ok(t):
                        rows.append((rid, pos, t, None, None))
                    else:
                        kind, msg = text_problem(t, text_field, f"row {pos}: ")
                        rows.append((rid, pos, None, kind, msg))
        cursor.rows = n_total
    finally:
        cursor.pos = pos
