"""Dead letters: recompute published error records of chosen kinds into the same output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
import time
from collections import defaultdict
from typing import Any, Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.batch.execution import execute_plan
from pipeline.batch.plan import RunError, RunPlan, make_plan
from pipeline.batch.summary import RunSummary, totals
from pipeline.config import JobSpec
from pipeline.errors import ErrorKind
from pipeline.io.commit import ERRORS, SourceSpec, read_manifest
from pipeline.io.lease import WriterLease
from pipeline.io.ranges import RangeSet
from pipeline.io.records import InputFile, LedgerEntry

logger = logging.getLogger(__name__)

RETRYABLE_KINDS = tuple(k.value for k in (
    ErrorKind.GENERATION_ERROR, ErrorKind.INVALID_OUTPUT, ErrorKind.TOO_LONG, ErrorKind.TRUNCATED_OUTPUT, ErrorKind.READ_ERROR
))
_READ_ERROR = ErrorKind.READ_ERROR.value


def retry_errors(spec: JobSpec, kinds: tuple[str, ...] = RETRYABLE_KINDS, interactive: Optional[bool] = None,
                 force: bool = False, wait: bool = False,
                 on_plan: Optional[Callable[[RunPlan], None]] = None) -> RunSummary:
    """Reprocess the published error records of the given kinds into the same output.

    Each (row, task) in error is computed again with the spec as given (for example a larger
    max_model_len, or context_policy: truncate); its old error record is taken out of the
    errors dataset and its new result (or new error) goes in, in one manifest switch, so
    every row stays exactly once per task.

    A read error stands for every row of its file from its position on that the output
    does not hold: retrying it re-reads exactly those rows (after checking that the file's
    fingerprint is the one it had), and its record goes only once every one of those rows
    is accounted for (a result, an error record, or a new read error further on).

    The spec must be the one the output was published with, but for the settings that
    decide whether a text fits (engine.max_model_len, engine.context_policy and the tasks'
    own context_policy): otherwise the
    retried rows would come from another model or prompt than their neighbours. `force`
    overrides that check. `on_plan` is called once the retry run is known and about to
    compute (the CLI moves its log file into the run's folder then).
    """
    t_start = time.time()
    base = make_plan(spec)
    store = base.store
    with WriterLease(store, owner="retry-errors", command="retry-errors", ttl_s=spec.output.lease_ttl_s, wait=wait) as lease:
        return _retry_locked(spec, base, kinds, interactive, t_start, lease, force, on_plan)


def _retry_locked(spec, base, kinds, interactive, t_start, lease, force, on_plan=None) -> RunSummary:
    store = base.store
    manifest = read_manifest(store)
    if manifest is None:
        raise RunError(f"{spec.output.path} has no published output to retry")
    published = manifest.compat
    if published and published != base.compat_fp and not force:
        raise RunError(
            f"{spec.output.path} was published with another configuration (model, prompts, sampling, reader "
            "options or engine versions differ from this spec): retried rows would not match the others. Use the "
            "spec it was published with (only max_model_len and the context policies may change), "
            "or pass --force to mix them knowingly."
        )
    enabled = set(spec.tasks.enabled())
    published_tasks = {d for d in manifest.datasets if d != ERRORS}
    select: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    reread: dict[str, RangeSet] = {}  # source -> positions of its read error rows
    hit_files: list[tuple[str, pa.Table]] = []
    owner = {f: u for u, e in manifest.sources.items() for f in e.files}
    for rel in manifest.datasets.get(ERRORS, []):
        t = store.read_parquet(rel)
        mask = pc.and_(pc.is_in(t["error_kind"], pa.array(list(kinds))), pc.is_in(t["task"], pa.array(sorted(enabled))))
        if _READ_ERROR in kinds:  # a read error goes for every task at once: its rows are re-read whole
            mask = pc.or_(mask, pc.equal(t["error_kind"], _READ_ERROR))
        chosen = t.filter(mask)
        if not chosen.num_rows:
            continue
        hit_files.append((rel, t.filter(pc.invert(mask))))
        for src, pos, task, kind in zip(chosen["source"].to_pylist(), chosen["position"].to_pylist(),
                                        chosen["task"].to_pylist(), chosen["error_kind"].to_pylist()):
            src = owner.get(rel, src)
            if kind == _READ_ERROR:
                reread[src] = reread.get(src, RangeSet()) | RangeSet([(pos, pos)])
            else:
                select[src][pos].add(task)
    if reread and not published_tasks <= enabled:
        raise RunError(
            f"retrying read errors recomputes every task of the rows it re-reads; the output holds tasks "
            f"{', '.join(sorted(published_tasks))}, the job enables {', '.join(sorted(enabled))}: enable them all"
        )
    for src, positions in reread.items():  # a re-read row needs every task: drop its chosen-task entries
        for p in list(select.get(src, {})):
            if p in positions:
                del select[src][p]
    todo = sorted(set(reread) | {u for u, rows in select.items() if rows})
    if not todo:
        logger.info("no error records of kinds %s to retry", ", ".join(kinds))
        return RunSummary(run_id="-", status="up-to-date", kind="retry-errors", output=spec.output.path)

    by_uri = {s.uri: s for s in base.sources}
    missing = [u for u in todo if u not in by_uri]
    if missing:
        raise RunError(f"cannot retry rows of inputs the job no longer lists: {', '.join(missing[:3])}")
    changed = [u for u in todo if u in manifest.sources and by_uri[u].fingerprint != manifest.sources[u].fingerprint]
    if changed:
        raise RunError(
            f"{changed[0]} changed since its rows were published (fingerprint {manifest.sources[changed[0]].fingerprint} "
            f"-> {by_uri[changed[0]].fingerprint}): a position there may now be another record, so its errors cannot be "
            "retried row by row. Run `pipeline run --incremental` to recompute the changed file(s) whole"
        )
    sel: dict[str, dict[str, Any]] = {}
    specs: list[SourceSpec] = []
    for u in todo:
        entry = manifest.sources[u]
        chosen = {str(p): ",".join(sorted(ts)) for p, ts in sorted(select.get(u, {}).items())}
        held = RangeSet(entry.positions)
        errs = reread.get(u, RangeSet())
        sel[u] = {"positions": chosen, "reread": u in reread, "held": (held - errs).ranges()}
        specs.append(SourceSpec(
            uri=u, fingerprint=entry.fingerprint, whole=u in reread,
            selected=RangeSet.of(int(p) for p in chosen) if chosen else None,
            held=held - errs, held_read_errors=[], file_rows=entry.file_rows, base=entry, keep_files=entry.files,
        ))
    h = hashlib.sha256(f"{manifest.version}|{base.config_fp}|{json.dumps(sel, sort_keys=True)}".encode())
    run_id = "retry-" + h.hexdigest()[:8]
    plan = dataclasses.replace(base, run_id=run_id, sources=[by_uri[u] for u in todo], append=True)
    committer = plan.committer
    pending = committer.pending_publish()
    if pending is not None:
        manifest = committer.execute_publish(pending, lease)
        return RunSummary(run_id=run_id, status="published", kind="retry-errors", output=spec.output.path,
                          version=manifest.version)

    # The errors files that lose records, rewritten without them (new names: the old ones
    # stay readable by the current manifest until the switch).
    rewrites: dict[str, Optional[str]] = {}
    for rel, kept in hit_files:
        if kept.num_rows:
            stem = posixpath.basename(rel).removesuffix(".parquet")
            new_rel = f"{committer.staging}/{ERRORS}/{stem}-{run_id}.parquet"
            store.write_parquet(new_rel, kept)
            rewrites[rel] = new_rel
        else:
            rewrites[rel] = None
    if on_plan is not None:
        on_plan(plan)
    ledger_rel = f"_runs/{run_id}.json"
    entry = LedgerEntry(run_id=run_id, config=plan.config_fp, kind="retry-errors", retried_kinds=list(kinds),
                        model=plan.model_path, output=spec.output.path,
                        inputs=[InputFile(uri=s.uri, fingerprint=s.fingerprint, size=s.size) for s in plan.sources],
                        started_at=time.time(), tasks=sorted(enabled), input=spec.input.model_dump(mode="json"))
    store.write_json(ledger_rel, entry)
    computed = execute_plan(plan, committer.committed_parts(), interactive, select=sel)
    prepared = committer.prepare(specs)
    counted = totals(prepared.parts, store, prepared.coverage)
    meta = {"config": manifest.config, "compat": published, "model": plan.model_path,
            "retention_s": spec.output.retention_hours * 3600}
    publish = committer.plan_publish(prepared, specs, append=True, meta=meta, rewrites=rewrites, kind="retry-errors",
                                     retention_s=spec.output.retention_hours * 3600)
    new_manifest = committer.publish(publish, lease)
    summary = RunSummary(
        run_id=run_id, status="published", kind="retry-errors", output=spec.output.path, model=plan.model_path,
        input_files=len(plan.sources), rows_computed=computed["rows"],
        rows_resumed=max(0, sum(p.rows for p in prepared.parts) - computed["rows"]),
        wall_seconds=round(time.time() - t_start, 3), version=new_manifest.version, **counted,
    )
    entry = entry.model_copy(update={"status": "published", "finished_at": time.time(), "summary": summary.to_json()})
    store.write_json(ledger_rel, entry)
    return summary
