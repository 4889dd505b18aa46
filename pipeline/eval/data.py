"""Gold columns and outputs, joined by row id.

Gold labels and reference texts are read from the job's input by the project's own readers
(`read_units`, once per column), so their row ids are exactly the ones a run gives its
outputs, for every format, compression and storage the pipeline reads. They are not carried
through the inference path: the model never sees them, the actors and output schema stay as
they are, and a gold column can be named after a run as well as before it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import pyarrow as pa

from pipeline.config import InputConfig

logger = logging.getLogger(__name__)

_UNIT = 10_000  # rows per table while reading gold columns: bounded memory per step


def read_columns(cfg: InputConfig, columns: dict[str, str], limit: Optional[int] = None,
                 require: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """Rows of the input as {"row_id", name: value or None, ...}, in input order.

    `columns` maps a name to an input column. Each column is read by `read_units` as if it
    were the text column (numbers and booleans as their JSON text), so a row's value is None
    exactly when the readers would refuse it as text (missing, empty, malformed record).
    Rows where any name in `require` is None are left out; `limit` stops after that many.
    """
    from pipeline.io.readers import read_units
    from pipeline.io.sources import list_sources

    names = list(columns)
    cfgs = [cfg.model_copy(update={"text_field": columns[n]}) for n in names]
    given = 0
    for src in list_sources(cfg):
        gens = [read_units(src, c, _UNIT, scalars=(columns[n] != cfg.text_field)) for n, c in zip(names, cfgs)]
        for tables in zip(*gens):
            # One record is one row in every pass (bad records become error rows), so the
            # passes over the same file line up unit by unit, row by row.
            rows = _line_up(tables, names)
            for row in rows:
                if any(row[r] is None for r in require):
                    continue
                yield row
                given += 1
                if limit is not None and given >= limit:
                    for g in gens:
                        g.close()
                    return


def _line_up(tables: tuple[pa.Table, ...], names: list[str]) -> list[dict[str, Any]]:
    first = tables[0]
    positions = first["position"].to_pylist()
    for t in tables[1:]:
        if t["position"].to_pylist() != positions:
            raise RuntimeError("reading the gold columns gave different rows per column; is the input changing?")
    out = [{"row_id": rid, "position": pos} for rid, pos in zip(first["row_id"].to_pylist(), positions)]
    for name, t in zip(names, tables):
        for row, v, kind in zip(out, t["text"].to_pylist(), t["error_kind"].to_pylist()):
            row[name] = v if kind is None else None
    return out


def read_outputs(output: str, task: str, columns: tuple[str, ...] = ("row_id", "output_text", "finish_reason")
                 ) -> Iterator[pa.Table]:
    """The published rows of one task dataset, file by file, only the columns asked for."""
    import pyarrow.parquet as pq

    from pipeline.io.commit import read_manifest
    from pipeline.io.store import Store

    store = Store(output)
    manifest = read_manifest(store)
    if manifest is None:
        return
    for rel in manifest.datasets.get(task, []):
        with store.fs.open_input_file(store.path(rel)) as f:
            yield pq.read_table(f, columns=list(columns))


def count_outputs(output: str, task: str) -> int:
    """Rows of a task's published dataset, from the Parquet footers (nothing else is read)."""
    import pyarrow.parquet as pq

    from pipeline.io.commit import read_manifest
    from pipeline.io.store import Store

    store = Store(output)
    manifest = read_manifest(store)
    if manifest is None:
        return 0
    n = 0
    for rel in manifest.datasets.get(task, []):
        with store.fs.open_input_file(store.path(rel)) as f:
            n += pq.ParquetFile(f).metadata.num_rows
    return n


def outputs_by_row(output: str, task: str, columns: tuple[str, ...] = ("output_text", "finish_reason")
                   ) -> dict[str, tuple]:
    """row_id -> the asked columns' values, for a task's published rows."""
    out: dict[str, tuple] = {}
    for t in read_outputs(output, task, ("row_id", *columns)):
        cols = [t[c].to_pylist() for c in columns]
        for i, rid in enumerate(t["row_id"].to_pylist()):
            out[rid] = tuple(c[i] for c in cols)
    return out
