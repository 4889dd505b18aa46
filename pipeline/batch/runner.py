"""A batch run from spec to published output: plan, execute, check, publish, summarize.

    plan (plan.py) ─▶ take the output's writer lease ─▶ execute on Ray (execution.py)
        ─▶ prove every input row is there exactly once ─▶ publish the manifest (pipeline.io.commit)
        ─▶ summary (summary.py) ─▶ housekeeping ─▶ give the lease back

Dead letters are recomputed by `retry_errors` (retry.py), through the same execution.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from pipeline.batch.execution import execute_plan, init_ray  # noqa: F401 - init_ray: public
from pipeline.batch.plan import RunError, RunPlan, make_plan  # noqa: F401 - re-exported
from pipeline.batch.retry import RETRYABLE_KINDS, retry_errors  # noqa: F401 - re-exported
from pipeline.batch.summary import RunSummary, throughput, totals
from pipeline.config import JobSpec
from pipeline.eval.run import evaluation_summary
from pipeline.io.commit import SourceSpec, fault_point, read_manifest
from pipeline.io.housekeeping import collect_garbage
from pipeline.io.lease import WriterLease
from pipeline.io.records import InputFile, LedgerEntry

logger = logging.getLogger(__name__)


def run(
    spec: JobSpec,
    force: bool = False,
    interactive: Optional[bool] = None,
    wait: bool = False,
    on_plan: Optional[Callable[[RunPlan], None]] = None,
) -> RunSummary:
    """interactive: a progress bar (True) or log lines (False); None: a bar on a terminal.
    on_plan: called once the run is known and about to compute (the CLI moves its log
    file into the run's folder then)."""
    t_start = time.time()
    plan = make_plan(spec, force=force)
    store = plan.store
    done = _published(plan)
    if done is not None and not store.exists(f"{plan.committer.staging}/_publish.json"):
        logger.info("run %s is already published in %s: nothing to do (use --force to recompute)", plan.run_id, spec.output.path)
        return done.model_copy(update={"status": "up-to-date", "rows_computed": 0, "wall_seconds": round(time.time() - t_start, 3)})
    if not plan.sources:
        logger.info("no input files to process")
        return RunSummary(run_id=plan.run_id, status="up-to-date", output=spec.output.path)
    with WriterLease(store, owner=plan.run_id, command="run", ttl_s=spec.output.lease_ttl_s, wait=wait) as lease:
        done = _published(plan)  # again: the writer we waited for may have been this same run
        if done is not None:
            # a publish killed after its switch: its leftovers, and a ledger that lagged
            store.delete_dir(plan.committer.staging)
            raw = store.read_json(plan.ledger_rel) or {}
            if raw.get("status") != "published":
                _mark_published(plan, done)
            return done.model_copy(update={"status": "up-to-date", "rows_computed": 0, "wall_seconds": round(time.time() - t_start, 3)})
        summary = _run_locked(plan, lease, interactive, t_start, on_plan)
        housekeeping(plan, lease)
    return summary


def _published(plan: RunPlan) -> Optional[RunSummary]:
    """This run's summary if the published version holds its rows for every input file
    (the manifest says so even when the run was killed before its ledger did)."""
    manifest = read_manifest(plan.store)
    if manifest is None or plan.run_id not in manifest.runs:
        return None
    for s in plan.sources:
        e = manifest.sources.get(s.uri)
        if e is None or e.run_id != plan.run_id or e.fingerprint != s.fingerprint:
            return None
    raw = plan.store.read_json(plan.ledger_rel)
    entry = LedgerEntry.model_validate(raw) if raw else _ledger(plan, 0.0)
    return RunSummary.model_validate({**entry.summary, "run_id": plan.run_id, "status": "published",
                                      "output": plan.spec.output.path})


def _run_locked(
    plan: RunPlan, lease: WriterLease, interactive: Optional[bool], t_start: float,
    on_plan: Optional[Callable[[RunPlan], None]] = None,
) -> RunSummary:
    spec, store, committer = plan.spec, plan.store, plan.committer
    fault_point("run-locked")
    raw = store.read_json(plan.ledger_rel)
    entry = LedgerEntry.model_validate(raw) if raw else None
    pending = committer.pending_publish()
    if pending is not None:  # a publish was interrupted: finish it, nothing to compute
        logger.info("finishing the interrupted publish of run %s", plan.run_id)
        manifest = committer.execute_publish(pending, lease)
        summary = RunSummary.model_validate(
            {**(entry.summary if entry else {}), "run_id": plan.run_id, "output": spec.output.path,
             "status": "published", "rows_computed": 0, "version": manifest.version}
        )
        _mark_published(plan, summary)
        return summary

    parts = committer.committed_parts()
    if parts:
        logger.info("resuming run %s: %d parts (%d rows) already committed", plan.run_id, len(parts), sum(p.rows for p in parts))
    if on_plan is not None:
        on_plan(plan)
    entry = _ledger(plan, entry.started_at if entry else t_start)
    store.write_json(plan.ledger_rel, entry)

    computed = execute_plan(plan, parts, interactive)

    t_pub = time.perf_counter()
    sources = [SourceSpec(uri=s.uri, fingerprint=s.fingerprint) for s in plan.sources]
    base = read_manifest(store)
    kept = []
    if plan.append and base is not None:
        touched = {s.uri for s in plan.sources}
        kept = [f for u, e in base.sources.items() if u not in touched for f in e.files]
    prepared = committer.prepare(
        sources,
        duplicate_policy=spec.input.duplicate_ids if spec.input.id_field else None,
        first_task=next(iter(spec.tasks.enabled())),
        kept_files=kept,
    )
    counted = totals(prepared.parts, store, prepared.coverage)
    meta = {"config": plan.config_fp, "compat": plan.compat_fp, "model": plan.model_path,
            "retention_s": spec.output.retention_hours * 3600}
    publish = committer.plan_publish(prepared, sources, append=plan.append, meta=meta,
                                     retention_s=spec.output.retention_hours * 3600)
    summary = RunSummary(
        run_id=plan.run_id,
        status="published",
        output=spec.output.path,
        model=plan.model_path,
        input_files=len(plan.sources),
        rows_computed=computed["rows"],
        rows_resumed=max(0, sum(p.rows for p in prepared.parts) - computed["rows"]),
        version=publish.manifest.version,
        **counted,
        **throughput(computed, t_start, plan.model_path, tasks=len(spec.tasks.enabled())),
    )
    # The ledger knows the summary before the switch: a publish finished by a later attempt
    # reports the same figures.
    entry = entry.model_copy(update={"summary": summary.to_json()})
    store.write_json(plan.ledger_rel, entry)
    manifest = committer.publish(publish, lease)
    fault_point("publish-ledger")
    publish_seconds = round(time.perf_counter() - t_pub, 3)
    summary = summary.model_copy(update={
        "version": manifest.version,
        "publish_seconds": publish_seconds,
        "evaluation": evaluation_summary(spec),  # reads the published outputs
        "wall_seconds": round(time.time() - t_start, 3),
    })
    _mark_published(plan, summary, entry)
    return summary


def _mark_published(plan: RunPlan, summary: RunSummary, entry: Optional[LedgerEntry] = None) -> None:
    if entry is None:
        raw = plan.store.read_json(plan.ledger_rel)
        entry = LedgerEntry.model_validate(raw) if raw else _ledger(plan, time.time())
    entry = entry.model_copy(update={"status": "published", "finished_at": time.time(), "summary": summary.to_json()})
    plan.store.write_json(plan.ledger_rel, entry)
    plan.store.write_json("summary.json", summary.to_json())


def _ledger(plan: RunPlan, started_at: float) -> LedgerEntry:
    spec = plan.spec
    return LedgerEntry(
        run_id=plan.run_id, config=plan.config_fp, status="running", model=plan.model_path,
        output=spec.output.path, inputs=[InputFile(uri=s.uri, fingerprint=s.fingerprint, size=s.size) for s in plan.sources],
        started_at=started_at, tasks=list(spec.tasks.enabled()),
        input=spec.input.model_dump(mode="json"),  # how to read the inputs again (`pipeline show`)
    )


def housekeeping(plan: RunPlan, lease: WriterLease) -> None:
    """Delete what the output no longer needs (past its retention); never fails a run."""
    try:
        collect_garbage(plan.store, plan.spec.output.retention_hours * 3600, keep_run=None)
    except Exception as e:  # noqa: BLE001 - garbage left is garbage for the next run
        logger.warning("housekeeping of %s failed (%s: %s); `pipeline gc` can retry it", plan.store.root_uri, type(e).__name__, e)
