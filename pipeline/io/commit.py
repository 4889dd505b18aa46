"""Where result rows become Parquet, and how a run's output is committed and published.

Layout of an output folder:

    OUTPUT/<dataset>/part-<run>-<unit>-<first position>.parquet   published files
    OUTPUT/_manifest.json        the published version: which files make each dataset
    OUTPUT/_SUCCESS              written after each complete publish
    OUTPUT/_runs/<run>.json      ledger of runs (inputs, counts, status)
    OUTPUT/_staging/<run>/...    work in progress, invisible to readers

The protocol follows the Hadoop output committer: a *part* (the rows of one commit unit
that one batch held) is written to staging, then committed by one atomic write of its
commit record; the job commit ("publish") moves committed parts into place and switches
the manifest with one atomic write. A publish interrupted half way is rolled forward by
the next run from its plan file. Readers that go through the manifest (`read_dataset`)
always see one complete version.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import defaultdict
from typing import Any, Iterable, Optional

import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.io.store import Store

logger = logging.getLogger(__name__)

STAGING = "_staging"
MANIFEST = "_manifest.json"
ERRORS = "errors"

ERROR_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("position", pa.int64()),
        pa.field("task", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)


class CommitError(PipelineError):
    """The committed parts do not add up (a dropped or doubled row): nothing is published."""


def part_key(unit: str, first_position: int) -> str:
    return f"{unit}-{first_position:012d}"


class RunCommitter:
    """Staging, part commits and publish for one run. Cheap to build and to pickle."""

    def __init__(self, store: Store, run_id: str):
        self.store = store
        self.run_id = run_id
        self.staging = f"{STAGING}/{run_id}"

    # -- parts ------------------------------------------------------------------------
    def _commit_rel(self, key: str) -> str:
        return f"{self.staging}/_commits/{key}.json"

    def is_committed(self, key: str) -> bool:
        return self.store.exists(self._commit_rel(key))

    def commit_part(self, key: str, tables: dict[str, pa.Table], record: dict[str, Any]) -> dict[str, Any]:
        """Write the part's files to staging, then its commit record (the atomic step)."""
        files = {}
        for dataset, table in tables.items():
            if table.num_rows == 0:
                continue
            rel = f"{self.staging}/{dataset}/part-{self.run_id}-{key}.parquet"
            self.store.write_parquet(rel, table)
            files[dataset] = rel
        record = {**record, "key": key, "run_id": self.run_id, "files": files, "committed_at": time.time()}
        self.store.write_json(self._commit_rel(key), record)
        return record

    def committed_parts(self) -> list[dict[str, Any]]:
        return [
            self.store.read_json(rel)
            for rel in sorted(self.store.list(f"{self.staging}/_commits", suffix=".json"))
        ]

    # -- job commit -------------------------------------------------------------------
    def plan_publish(
        self,
        parts: list[dict[str, Any]],
        append: bool,
        meta: dict[str, Any],
        rewrites: Optional[dict[str, Optional[str]]] = None,
    ) -> dict[str, Any]:
        """rewrites: published file -> staged replacement (or None to drop it); used when a
        retry takes error records out of the errors dataset."""
        check_coverage(parts)
        old = read_manifest(self.store) or {"version": 0, "datasets": {}, "runs": []}
        rewrites = rewrites or {}
        moves = []
        new: dict[str, list[str]] = defaultdict(list)
        staged = [(d, src) for p in parts for d, src in p["files"].items()]
        staged += [(posixpath.dirname(old_rel), src) for old_rel, src in rewrites.items() if src]
        for dataset, src in staged:
            dst = f"{dataset}/{posixpath.basename(src)}"
            moves.append([src, dst])
            new[dataset].append(dst)
        datasets: dict[str, list[str]] = defaultdict(list)
        if append:
            for d, files in old["datasets"].items():
                datasets[d].extend(f for f in files if f not in rewrites)
        for d, files in new.items():
            datasets[d].extend(files)
        datasets = {d: sorted(set(f)) for d, f in datasets.items()}
        keep = {f for files in datasets.values() for f in files}
        stale = sorted({f for files in old["datasets"].values() for f in files} - keep)
        manifest = {
            "version": old["version"] + 1,
            "runs": (old.get("runs", []) if append else []) + [self.run_id],
            "datasets": datasets,
            "published_at": time.time(),
            **meta,
        }
        return {"moves": moves, "manifest": manifest, "delete": stale}

    def publish(
        self,
        parts: list[dict[str, Any]],
        append: bool,
        meta: dict[str, Any],
        rewrites: Optional[dict[str, Optional[str]]] = None,
    ) -> dict[str, Any]:
        plan = self.plan_publish(parts, append, meta, rewrites)
        self.store.write_json(f"{self.staging}/_publish.json", plan)
        return self.execute_publish(plan)

    def pending_publish(self) -> Optional[dict[str, Any]]:
        return self.store.read_json(f"{self.staging}/_publish.json")

    def execute_publish(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Idempotent, so a publish killed at any step is finished by running it again."""
        for i, (src, dst) in enumerate(plan["moves"]):
            _fault_point("publish-move", i)
            self.store.move(src, dst)
        self.store.write_json(MANIFEST, plan["manifest"])  # the switch: one atomic write
        for rel in plan["delete"]:
            self.store.delete(rel)
        self.store.write_bytes("_SUCCESS", b"")
        self.store.delete_dir(self.staging)
        logger.info("published version %s of %s", plan["manifest"]["version"], self.store.root_uri)
        return plan["manifest"]


def _fault_point(name: str, i: int) -> None:
    """Crash here when PIPELINE_FAULT=name:i: how the tests kill a run inside its commit phase."""
    import os

    if os.environ.get("PIPELINE_FAULT") == f"{name}:{i}":
        logger.error("PIPELINE_FAULT=%s:%d: crashing on purpose", name, i)
        os._exit(86)


def check_coverage(parts: Iterable[dict[str, Any]]) -> None:
    """Each unit's committed parts must hold each of its rows exactly once."""
    by_unit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in parts:
        by_unit[p["unit"]].append(p)
    problems = []
    for unit, ps in by_unit.items():
        ps.sort(key=lambda p: p["first_position"])
        total = sum(p["rows"] for p in ps)
        expected = ps[0]["unit_rows"]
        for a, b in zip(ps, ps[1:]):
            if b["first_position"] <= a["last_position"]:
                problems.append(f"unit {unit}: parts {a['key']} and {b['key']} overlap")
        if total != expected:
            problems.append(f"unit {unit}: {total} rows committed, {expected} read")
    if problems:
        raise CommitError("committed output is inconsistent; nothing published: " + "; ".join(problems[:5]))


def read_manifest(store: Store) -> Optional[dict[str, Any]]:
    return store.read_json(MANIFEST)


def read_dataset(output: str, dataset: str) -> pa.Table:
    """One dataset of the published version, as pyarrow sees it through the manifest."""
    import pyarrow.dataset as pads

    store = Store(output)
    manifest = read_manifest(store)
    if manifest is None:
        raise FileNotFoundError(f"{output} has no published output ({MANIFEST} missing)")
    files = [store.path(f) for f in manifest["datasets"].get(dataset, [])]
    if not files:
        from pipeline.tasks import REGISTRY

        return (REGISTRY[dataset].schema() if dataset in REGISTRY else ERROR_SCHEMA).empty_table()
    return pads.dataset(files, filesystem=store.fs, format="parquet").to_table()
