"""Duplicate ids in the id column, found before publishing, in bounded memory.

The coverage proof counts positions, so two records whose id column holds the same value
(`1` and `"1"` both become "1") pass it. This pass reads the ids of the committed parts
(and of the published files a new version keeps), one task's rows only (every row
appears once per task), and groups them by id: in one pass when they fit a bucket, else
hash-partitioned into spill files on local disk, one bucket in memory at a time. Memory
is bounded by `BUCKET_ROWS` ids, whatever the output's size.

The first occurrence wins (published rows first, then by input file and position); each
later one becomes a `duplicate_id` error record for every task (policy "error"), or the
run fails before publishing (policy "fail").
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections import defaultdict
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ErrorKind
from pipeline.io.records import PartRecord

logger = logging.getLogger(__name__)

BUCKET_ROWS = 2_000_000

_SCHEMA = pa.schema([("row_id", pa.string()), ("new", pa.bool_()), ("source", pa.string()),
                     ("position", pa.int64()), ("part", pa.string())])


def handle_duplicates(committer, parts: list[PartRecord], policy: str, first_task: str,
                      kept_files: list[str]) -> list[PartRecord]:
    from pipeline.io.commit import CommitError

    dups = find_duplicates(committer.store, parts, first_task, kept_files)
    if not dups:
        return parts
    n_ids = len({d[2] for d in dups})
    example = dups[0]
    if policy == "fail":
        raise CommitError(
            f"{len(dups)} rows repeat an id another row holds ({n_ids} distinct ids; e.g. id {example[2]!r} at "
            f"{example[0]}#{example[1]} was already seen at {example[3]}); nothing was published. Fix the id "
            "column, or set input.duplicate_ids: error to keep the first occurrence and record the others as "
            "duplicate_id errors"
        )
    logger.warning("%d rows repeat an id seen before (%d ids, e.g. %r): recorded as duplicate_id errors",
                   len(dups), n_ids, example[2])
    by_part: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)
    for source, position, row_id, first, part in dups:
        by_part[part][position] = (ErrorKind.DUPLICATE_ID.value, f"id {row_id!r} was already used by the row at {first}")
    out = []
    for p in parts:
        if p.key in by_part:
            new = committer.rewrite_part(p, errors=by_part[p.key])
            if new is not None:
                out.append(new)
        else:
            out.append(p)
    return out


def find_duplicates(store, parts: list[PartRecord], first_task: str,
                    kept_files: list[str]) -> list[tuple[str, int, str, str, str]]:
    """(source, position, row id, where it was first seen, part key) of every later occurrence
    of an id, among the new parts' rows."""
    total = sum(p.rows for p in parts if p.tasks is None)
    if total + len(kept_files) > BUCKET_ROWS:  # many rows, maybe: count the published ones (file footers)
        total += sum(_rows_of(store, f) for f in kept_files)
    buckets = max(1, math.ceil(total / BUCKET_ROWS))
    chunks = _id_chunks(store, parts, first_task, kept_files)
    if buckets == 1:
        tables = list(chunks)
        return _duplicates_in(pa.concat_tables(tables) if tables else _SCHEMA.empty_table())
    import pandas as pd

    out = []
    with tempfile.TemporaryDirectory(prefix="pipeline-ids-") as tmp:
        writers = [pa.ipc.new_file(f"{tmp}/{b}.arrow", _SCHEMA) for b in range(buckets)]
        try:
            for t in chunks:
                h = pd.util.hash_array(t["row_id"].to_numpy(zero_copy_only=False)) % buckets
                for b in set(h.tolist()):
                    writers[b].write_table(t.filter(pa.array(h == b)))
        finally:
            for w in writers:
                w.close()
        for b in range(buckets):
            with pa.memory_map(f"{tmp}/{b}.arrow") as src:
                out.extend(_duplicates_in(pa.ipc.open_file(src).read_all()))
    return out


def _rows_of(store, rel: str) -> int:
    import pyarrow.parquet as pq

    with store.fs.open_input_file(store.path(rel)) as f:
        return pq.ParquetFile(f).metadata.num_rows


def _id_chunks(store, parts: list[PartRecord], first_task: str, kept_files: list[str]) -> Iterator[pa.Table]:
    from pipeline.io.commit import ERRORS

    def ids(rel: str, new: bool, part: str, errors: bool) -> Optional[pa.Table]:
        cols = ["row_id", "source", "position"] + (["task", "error_kind"] if errors else [])
        t = store.read_parquet(rel, columns=cols)
        if errors:  # one task's records; a duplicate_id record is the trace of an earlier pass
            keep = pc.and_(pc.equal(t["task"], first_task), pc.not_equal(t["error_kind"], ErrorKind.DUPLICATE_ID.value))
            t = t.filter(keep).select(["row_id", "source", "position"])
        n = t.num_rows
        if not n:
            return None
        return pa.table([t["row_id"], pa.array([new] * n), t["source"], t["position"], pa.array([part] * n, pa.string())],
                        schema=_SCHEMA)

    for rel in kept_files:
        dataset = rel.split("/", 1)[0]
        if dataset in (first_task, ERRORS):
            t = ids(rel, False, "", dataset == ERRORS)
            if t is not None:
                yield t
    for p in parts:
        if p.tasks is not None:
            continue
        for dataset in (first_task, ERRORS):
            pf = p.files.get(dataset)
            if pf is not None:
                t = ids(pf.path, True, p.key, dataset == ERRORS)
                if t is not None:
                    yield t


def _duplicates_in(t: pa.Table) -> list[tuple[str, int, str, str, str]]:
    if t.num_rows < 2:
        return []
    counts = t.group_by("row_id").aggregate([("row_id", "count")])
    repeated = counts.filter(pc.greater(counts["row_id_count"], 1))["row_id"]
    if not len(repeated):
        return []
    rows = t.filter(pc.is_in(t["row_id"], repeated)).to_pylist()
    # published rows first (new=False sorts first), then by input file and position
    rows.sort(key=lambda r: (r["row_id"], r["new"], r["source"], r["position"]))
    out = []
    first: dict[str, str] = {}
    for r in rows:
        where = f"{r['source']}#{r['position']}"
        if r["row_id"] not in first:
            first[r["row_id"]] = where
        elif r["new"]:
            out.append((r["source"], r["position"], r["row_id"], first[r["row_id"]], r["part"]))
    return out
