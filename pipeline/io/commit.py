"""Where result rows become Parquet, and how a run's output is committed and published.

Layout of an output folder:

    OUTPUT/<dataset>/part-*.parquet   published files (one dataset per task, and errors)
    OUTPUT/_manifest/<version>.json   the published versions (pipeline.io.manifest)
    OUTPUT/_manifest.json             a copy of the latest version
    OUTPUT/_lease.json                the writer's lease (pipeline.io.lease)
    OUTPUT/_runs/<run>.json           ledger of runs (inputs, counts, status)
    OUTPUT/_staging/<run>/...         work in progress, invisible to readers

The protocol follows the Hadoop output committer, with Delta Lake's log for the switch:

1. A *part* (the rows of one commit unit that one batch held) is written to staging under
   a name unique to the attempt, then committed by one atomic write of its commit record
   (`PartRecord`: which positions of which input file it holds). The read stage writes a
   `FileRecord` (the file's record count) for each input file it read to its end.
2. The publish proves coverage by positions (pipeline.io.coverage): every record of every
   input file held exactly once, or stood for by a read error. Parts that overlap (a
   batch retried with other boundaries) are trimmed; duplicate ids are handled as the job
   says (pipeline.io.dedupe). Otherwise nothing is published.
3. It writes its plan (`PublishPlan`), then moves parts into place, merging the small parts
   of each input file into larger files (so the file count grows with inputs, not
   batches), then switches the manifest by creating the next version (compare-and-swap).
   A publish killed at any step is finished by the next attempt from its plan; one that
   lost the race for the version is rebased on the winner's version.
4. Files the new version no longer lists are deleted only after the output's retention
   (pipeline.io.housekeeping), so readers of the previous version keep working.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import PipelineError
from pipeline.io.coverage import FileCoverage, check_file, check_selected, resolve_overlaps
from pipeline.io.manifest import read_manifest, read_dataset, switch, write_pointer  # noqa: F401 - re-exported
from pipeline.io.ranges import RangeSet
from pipeline.io.records import (
    FileRecord,
    Manifest,
    PartFile,
    PartRecord,
    PublishPlan,
    PublishStep,
    SourceEntry,
    TaskCount,
    datasets_of,
)
from pipeline.io.store import Store, parquet_bytes

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
        # read_error only: the last position it stands for (-1: to the end of the file).
        pa.field("covers_to", pa.int64()),
    ]
)

DEFAULT_TARGET_BYTES = 64 << 20


class CommitError(PipelineError):
    """The committed parts do not add up (a dropped or doubled row): nothing is published."""


def part_key(unit: str, first_position: int) -> str:
    return f"{unit}-{first_position:012d}"


# -- fault injection -----------------------------------------------------------------
_fault_hits: dict[str, int] = defaultdict(int)
_fault_lock = threading.Lock()


def fault_point(name: str) -> None:
    """Crash here (os._exit(86), as a kill would: no cleanup) when PIPELINE_FAULT names
    this point: `name:i` at its i-th hit in this process (0-based), `any:k` at the k-th
    fault point hit of any name. How the tests kill a run inside its commit phase."""
    trace = os.environ.get("PIPELINE_FAULT_TRACE")
    if trace:  # the tests draw random kill points among the points a run passes
        with open(trace, "a") as f:
            f.write(name + "\n")
    spec = os.environ.get("PIPELINE_FAULT")
    if not spec:
        return
    with _fault_lock:  # publish steps run on several threads
        n = _fault_hits[name]
        _fault_hits[name] += 1
        total = _fault_hits["*"]
        _fault_hits["*"] += 1
    for item in spec.split(","):
        what, _, at = item.strip().partition(":")
        if (what == name and at == str(n)) or (what == "any" and at == str(total)):
            logger.error("PIPELINE_FAULT=%s: crashing at %s (hit %d)", item, name, n)
            os._exit(86)


# -- what a publish must cover ---------------------------------------------------------
@dataclass
class SourceSpec:
    """One input file a publish must cover, and what of it the published version keeps."""

    uri: str
    fingerprint: str
    whole: bool = True  # every record must be held (a run; a retry re-reading read errors)
    selected: Optional[RangeSet] = None  # retry of chosen rows' tasks: exactly these positions
    held: RangeSet = field(default_factory=RangeSet)  # positions kept from the published version
    held_read_errors: list[tuple[int, int]] = field(default_factory=list)
    file_rows: Optional[int] = None  # known from the published version
    base: Optional[SourceEntry] = None  # its published entry, if it is kept (retries)
    keep_files: list[str] = field(default_factory=list)  # published files of it that stay


@dataclass
class Prepared:
    """Parts after overlap resolution and duplicate handling, with the coverage proof."""

    parts: list[PartRecord]
    coverage: dict[str, FileCoverage]


class RunCommitter:
    """Staging, part commits and publish for one run. Cheap to build and to pickle."""

    def __init__(self, store: Store, run_id: str, target_bytes: int = DEFAULT_TARGET_BYTES):
        self.store = store
        self.run_id = run_id
        self.staging = f"{STAGING}/{run_id}"
        self.target_bytes = target_bytes

    # -- parts ------------------------------------------------------------------------
    def _commit_rel(self, key: str) -> str:
        return f"{self.staging}/_commits/{key}.json"

    def is_committed(self, key: str) -> bool:
        return self.store.exists(self._commit_rel(key))

    def read_part(self, key: str) -> Optional[PartRecord]:
        raw = self.store.read_json(self._commit_rel(key))
        return PartRecord.model_validate(raw) if raw else None

    def commit_part(self, record: PartRecord, tables: dict[str, pa.Table]) -> PartRecord:
        """Write the part's files to staging, then its commit record (the atomic step).
        File names are unique to this attempt, so a record always names its own files even
        when two attempts (a retried batch, a zombie driver) commit the same key."""
        attempt = uuid.uuid4().hex[:8]
        files = {}
        for dataset, table in tables.items():
            if table.num_rows == 0:
                continue
            rel = f"{self.staging}/{dataset}/part-{self.run_id}-{record.key}-{attempt}.parquet"
            size = self.store.write_parquet(rel, table)
            files[dataset] = PartFile(path=rel, rows=table.num_rows, bytes=size)
        fault_point("commit-files")
        record = record.model_copy(update={"run_id": self.run_id, "files": files, "committed_at": time.time()})
        self.store.write_json(self._commit_rel(record.key), record)
        fault_point("commit-record")
        return record

    def committed_parts(self) -> list[PartRecord]:
        out = []
        for rel in sorted(self.store.list(f"{self.staging}/_commits", suffix=".json")):
            raw = self.store.read_json(rel)
            if raw:  # listed, then removed by a trim: gone
                out.append(PartRecord.model_validate(raw))
        return out

    def drop_part(self, key: str) -> None:
        self.store.delete(self._commit_rel(key))

    # -- input files ------------------------------------------------------------------
    def _file_rel(self, key: str) -> str:
        return f"{self.staging}/_files/{key}.json"

    def write_file_record(self, key: str, record: FileRecord) -> None:
        fault_point("file-record")
        self.store.write_json(self._file_rel(key), record)

    def file_records(self) -> dict[str, FileRecord]:
        out = {}
        for rel in self.store.list(f"{self.staging}/_files", suffix=".json"):
            raw = self.store.read_json(rel)
            if raw:
                rec = FileRecord.model_validate(raw)
                out[rec.source] = rec
        return out

    # -- before publishing ---------------------------------------------------------------
    def prepare(self, sources: list[SourceSpec], duplicate_policy: Optional[str] = None,
                first_task: Optional[str] = None, kept_files: Iterable[str] = (),
                listing_retries: int = 3) -> Prepared:
        """Resolve overlapping parts, prove coverage, handle duplicate ids. Raises CommitError
        (nothing published) when the parts do not cover the inputs. On S3 a listing may lag
        a commit that just happened: a shortfall is listed again before it counts."""
        for attempt in range(listing_retries + 1):
            parts = self._resolve(self.committed_parts(), sources)
            problems, coverage = self._check(parts, sources)
            if not problems:
                break
            if attempt < listing_retries and not self.store.local:
                time.sleep(0.5 * 2**attempt)
                continue
            raise CommitError(
                "the committed parts do not cover the input, so nothing was published: "
                + "; ".join(problems[:5])
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
                + ". Rerun the same command: it keeps what was committed and computes what is missing"
            )
        if duplicate_policy is not None and first_task is not None:
            from pipeline.io.dedupe import handle_duplicates

            parts = handle_duplicates(self, parts, duplicate_policy, first_task, list(kept_files))
        return Prepared(parts, coverage)

    def _resolve(self, parts: list[PartRecord], sources: list[SourceSpec]) -> list[PartRecord]:
        wanted = {s.uri for s in sources}
        stray = [p for p in parts if p.source not in wanted]
        if stray:
            logger.warning("ignoring %d committed parts of files this run does not cover (e.g. %s)", len(stray), stray[0].source)
        parts = [p for p in parts if p.source in wanted]
        held = {s.uri: s.held for s in sources if s.held}
        res = resolve_overlaps(parts, held)
        if res.drop or res.trim:
            logger.warning("%d committed parts hold rows other parts hold too (a batch retried with other "
                           "boundaries): keeping the first commit of each row", len(res.drop) + len(res.trim))
        for p in res.drop:
            self.drop_part(p.key)
        out = list(res.keep)
        for p, remove in res.trim:
            t = self.rewrite_part(p, drop=remove)
            if t is not None:
                out.append(t)
        return out

    def _check(self, parts: list[PartRecord], sources: list[SourceSpec]) -> tuple[list[str], dict[str, FileCoverage]]:
        by_source: dict[str, list[PartRecord]] = defaultdict(list)
        for p in parts:
            by_source[p.source].append(p)
        files = self.file_records()
        problems: list[str] = []
        coverage: dict[str, FileCoverage] = {}
        for s in sources:
            ps = by_source.get(s.uri, [])
            fr = files.get(s.uri)
            if fr is not None and fr.fingerprint != s.fingerprint:
                problems.append(f"{s.uri}: read with fingerprint {fr.fingerprint}, expected {s.fingerprint}")
                continue
            if s.selected is not None:
                msg = check_selected(s.uri, ps, s.selected)
                if msg:
                    problems.append(msg)
            if not s.whole:
                continue
            n = fr.file_rows if fr is not None else s.file_rows
            cov, msg = check_file(s.uri, ps, n, s.held, s.held_read_errors)
            if msg:
                problems.append(msg)
            else:
                coverage[s.uri] = cov
        return problems, coverage

    def rewrite_part(self, part: PartRecord, drop: RangeSet = RangeSet(),
                     errors: Optional[dict[int, tuple[str, str]]] = None) -> Optional[PartRecord]:
        """Replace a committed part by one without the rows at `drop`, and with rows at
        `errors` (position -> (kind, message)) turned into error records for every task.
        The new record replaces the old in one atomic write (same key, new files)."""
        errors = errors or {}
        change = drop | RangeSet.of(errors)
        tables: dict[str, pa.Table] = {}
        counts: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "error": 0, "truncated": 0})
        ptoks = otoks = 0
        new_errors: list[dict[str, Any]] = []
        for dataset, pf in part.files.items():
            t = self.store.read_parquet(pf.path)
            pos = t["position"].to_pylist()
            keep = [p not in change for p in pos]
            if dataset == ERRORS:  # a row's existing error records stay as they are
                keep = [p not in drop for p in pos]
            else:  # its results become error records
                for row in t.filter(pa.array([not k and p in errors for k, p in zip(keep, pos)])).to_pylist():
                    kind, message = errors[row["position"]]
                    new_errors.append({"row_id": row["row_id"], "source": row["source"], "position": row["position"],
                                       "task": dataset, "error_kind": kind, "error_message": message,
                                       "run_id": row.get("run_id") or self.run_id, "covers_to": None})
            tables[dataset] = t.filter(pa.array(keep, pa.bool_()))
        if new_errors:
            errs = pa.Table.from_pylist(new_errors, schema=ERROR_SCHEMA)
            tables[ERRORS] = pa.concat_tables([tables[ERRORS], errs]) if ERRORS in tables else errs
        for dataset, t in tables.items():
            if dataset == ERRORS:
                for task in t["task"].to_pylist():
                    counts[task]["error"] += 1
            else:
                counts[dataset]["ok"] += t.num_rows
                if "output_truncated" in t.column_names:
                    counts[dataset]["truncated"] += pc.sum(t["output_truncated"]).as_py() or 0
                ptoks += pc.sum(t["prompt_tokens"]).as_py() or 0 if "prompt_tokens" in t.column_names else 0
                otoks += pc.sum(t["output_tokens"]).as_py() or 0 if "output_tokens" in t.column_names else 0
        positions = part.position_set() - drop
        if not positions:
            self.drop_part(part.key)
            return None
        read_errors = [e for e in part.read_errors if e[0] in positions]
        new = part.model_copy(update={
            "positions": [tuple(r) for r in positions.ranges()], "rows": len(positions), "read_errors": read_errors,
            "counts": {t: TaskCount(**c) for t, c in counts.items()}, "prompt_tokens": ptoks, "output_tokens": otoks,
        })
        return self.commit_part(new, tables)

    # -- job commit -------------------------------------------------------------------
    def plan_publish(
        self,
        prepared: Prepared,
        sources: list[SourceSpec],
        append: bool,
        meta: dict[str, Any],
        rewrites: Optional[dict[str, Optional[str]]] = None,
        kind: str = "run",
        retention_s: float = 7 * 24 * 3600,
    ) -> PublishPlan:
        """rewrites: published file -> staged replacement (or None to drop it); used when a
        retry takes error records out of the errors dataset."""
        base = read_manifest(self.store)
        if append and base is not None and base.datasets and not base.sources:
            raise CommitError(
                f"{self.store.root_uri} was published by an older version of pipeline (its manifest does not "
                "say which input file each data file holds), so it cannot be updated in place; run once "
                "without --incremental to republish it whole"
            )
        rewrites = rewrites or {}
        plan_id = uuid.uuid4().hex[:12]
        by_source: dict[str, list[PartRecord]] = defaultdict(list)
        for p in prepared.parts:
            by_source[p.source].append(p)
        steps: list[PublishStep] = []
        touched: dict[str, SourceEntry] = {}
        for s in sources:
            ps = sorted(by_source.get(s.uri, []), key=lambda p: p.positions[0][0] if p.positions else -1)
            if not ps and s.base is None and s.uri not in prepared.coverage:
                continue
            staged: dict[str, list[tuple[str, int]]] = defaultdict(list)  # dataset -> [(staged file, bytes)]
            keep = []
            for f in (s.keep_files if s.base is not None else []):
                if f in rewrites:
                    if rewrites[f]:
                        staged[posixpath.dirname(f)].append((rewrites[f], 0))
                else:
                    keep.append(f)
            for p in ps:
                for dataset, pf in p.files.items():
                    staged[dataset].append((pf.path, pf.bytes))
            key = _source_key(s.uri)
            for dataset, items in sorted(staged.items()):
                # A retry adds a few rows to a file's datasets: merge them with its small
                # published files rather than adding a file per retry.
                olds = [f for f in keep if posixpath.dirname(f) == dataset]
                keep = [f for f in keep if f not in olds]
                sized = [(f, self._size(f)) for f in olds] + items
                for i, srcs in enumerate(_bins(sized, self.target_bytes)):
                    if len(srcs) == 1 and srcs[0] in olds:
                        keep.append(srcs[0])  # stays as it is
                        continue
                    if len(srcs) == 1:
                        dst = f"{dataset}/{posixpath.basename(srcs[0])}"
                    else:
                        dst = f"{dataset}/part-{self.run_id}-{key}-{plan_id}-{i:04d}.parquet"
                    steps.append(PublishStep(srcs=srcs, dst=dst))
                    keep.append(dst)
            files = keep
            touched[s.uri] = self._entry(s, ps, prepared.coverage.get(s.uri), sorted(files))
        drop = sorted({f for u in touched for f in (base.sources[u].files if base and u in base.sources else [])}
                      - {f for e in touched.values() for f in e.files})
        now = time.time()
        manifest = build_manifest(base, touched, append, meta, plan_id, now, retention_s)
        return PublishPlan(plan_id=plan_id, run_id=self.run_id, kind=kind, append=append,
                           base_version=base.version if base else 0, steps=steps, touched=touched,
                           drop_files=drop, meta=meta, manifest=manifest)

    def _size(self, rel: str) -> int:
        import pyarrow.fs as pafs

        info = self.store.fs.get_file_info(self.store.path(rel))
        return info.size if info.type == pafs.FileType.File and info.size is not None else self.target_bytes

    def _entry(self, s: SourceSpec, parts: list[PartRecord], cov: Optional[FileCoverage], files: list[str]) -> SourceEntry:
        if cov is None:  # a retry of chosen rows' tasks only: coverage unchanged
            assert s.base is not None
            return s.base.model_copy(update={"files": files, "run_id": s.base.run_id})
        return SourceEntry(
            fingerprint=s.fingerprint,
            run_id=self.run_id if s.base is None else s.base.run_id,
            file_rows=cov.file_rows,
            rows=cov.rows,
            positions=[tuple(r) for r in cov.positions.ranges()],
            read_errors=[tuple(e) for e in cov.read_errors],
            read_error_rows=cov.read_error_rows,
            files=files,
        )

    def publish(self, plan: PublishPlan, lease: Any = None) -> Manifest:
        fault_point("publish-plan")
        self.store.write_json(f"{self.staging}/_publish.json", plan)
        return self.execute_publish(plan, lease)

    def pending_publish(self) -> Optional[PublishPlan]:
        raw = self.store.read_json(f"{self.staging}/_publish.json")
        if not raw:
            return None
        try:
            return PublishPlan.model_validate(raw)
        except ValueError:
            logger.warning("ignoring the unfinished publish plan of run %s: written by another version", self.run_id)
            return None

    def execute_publish(self, plan: PublishPlan, lease: Any = None, rebases: int = 5) -> Manifest:
        """Idempotent, so a publish killed at any step is finished by running it again."""
        def do(step: PublishStep) -> None:
            fault_point("publish-step")
            self._do_step(step)

        # Steps are independent and bound by storage round trips (S3 copies, merges): overlap them.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(plan.steps)))) as pool:
            list(pool.map(do, plan.steps))
        manifest = plan.manifest
        for attempt in range(rebases + 1):
            if lease is not None:
                lease.check()
            if switch(self.store, manifest):
                break
            latest = read_manifest(self.store)
            if plan.kind != "run" or attempt == rebases or latest is None:
                raise CommitError(
                    f"another writer published version {manifest.version} of {self.store.root_uri} while this "
                    f"{plan.kind} was publishing; nothing of it was published. Rerun the command on the new version"
                )
            logger.warning("version %d of the output was published by another writer (run(s) %s): rebasing this "
                           "publish on it", manifest.version, ", ".join(latest.runs[-3:]))
            manifest = build_manifest(latest, plan.touched, plan.append, plan.meta, plan.plan_id, time.time(),
                                      _retention_of(plan))
        fault_point("publish-cleanup")
        self.store.write_bytes("_SUCCESS", b"")
        self.store.delete_dir(self.staging)
        logger.info("published version %s of %s", manifest.version, self.store.root_uri)
        return manifest

    def _do_step(self, step: PublishStep) -> None:
        if len(step.srcs) == 1:
            self.store.move(step.srcs[0], step.dst)
            return
        if self.store.exists(step.dst):  # merged before a crash (writes are atomic)
            return
        tables = [self.store.read_parquet(s) for s in step.srcs]
        schema = tables[0].schema
        merged = pa.concat_tables([t.cast(schema) if t.schema != schema else t for t in tables])
        self.store.write_bytes(step.dst, parquet_bytes(merged))


def _retention_of(plan: PublishPlan) -> float:
    return float(plan.meta.get("retention_s", 7 * 24 * 3600))


def build_manifest(base: Optional[Manifest], touched: dict[str, SourceEntry], append: bool,
                   meta: dict[str, Any], plan_id: str, now: float, retention_s: float) -> Manifest:
    """The version after `base`: `touched` input files (re)placed; with `append`, the other
    files of `base` kept, else dropped. Files that leave are kept readable for retention_s."""
    sources = dict(base.sources) if (append and base is not None) else {}
    sources.update(touched)
    datasets = datasets_of(sources)
    new_files = {f for fs in datasets.values() for f in fs}
    retired: dict[str, float] = {}
    if base is not None:
        retired = {f: t for f, t in base.retired.items() if now - t < retention_s and f not in new_files}
        retired.update({f: now for f in base.files() - new_files})
    runs: list[str] = []
    used = {e.run_id for e in sources.values()}
    for r in (base.runs if base is not None else []) + [e.run_id for e in touched.values()]:
        if r in used and r not in runs:
            runs.append(r)
    return Manifest(
        version=(base.version if base is not None else 0) + 1,
        runs=runs,
        config=meta.get("config"),
        compat=meta.get("compat"),
        model=meta.get("model"),
        published_at=now,
        plan_id=plan_id,
        datasets=datasets,
        sources=dict(sorted(sources.items())),
        retired=retired,
    )


def _bins(items: list[tuple[str, int]], target: int) -> list[list[str]]:
    """Consecutive files packed into groups of at most `target` bytes (a larger file alone)."""
    out: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for path, n in items:
        if cur and size + n > target:
            out.append(cur)
            cur, size = [], 0
        cur.append(path)
        size += n
    if cur:
        out.append(cur)
    return out


def _source_key(uri: str) -> str:
    import hashlib

    return hashlib.sha1(uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]
