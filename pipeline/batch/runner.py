"""A batch run from spec to published output: plan, execute, check, publish, summarize.

    plan (plan.py) ─▶ execute on Ray (execution.py) ─▶ check every row is there exactly once
        ─▶ publish the manifest (pipeline.io.commit) ─▶ summary (summary.py)

Dead letters are recomputed by `retry_errors` (retry.py), through the same execution.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from pipeline.batch.execution import execute_plan, init_ray  # noqa: F401 - init_ray: public
from pipeline.batch.plan import RunError, RunPlan, make_plan  # noqa: F401 - re-exported
from pipeline.batch.retry import RETRYABLE_KINDS, retry_errors  # noqa: F401 - re-exported
from pipeline.batch.summary import RunSummary, throughput, totals
from pipeline.config import JobSpec
from pipeline.eval.run import evaluation_summary
from pipeline.io.commit import read_manifest

logger = logging.getLogger(__name__)


def run(spec: JobSpec, force: bool = False, interactive: Optional[bool] = None) -> RunSummary:
    t_start = time.time()
    plan = make_plan(spec, force=force)
    store, committer = plan.store, plan.committer
    entry = store.read_json(plan.ledger_rel)
    manifest = read_manifest(store)

    if entry and entry.get("status") == "published" and manifest and plan.run_id in manifest.get("runs", []):
        logger.info("run %s is already published in %s: nothing to do (use --force to recompute)", plan.run_id, spec.output.path)
        done = RunSummary.model_validate({**entry.get("summary", {}), "run_id": plan.run_id})
        return done.model_copy(update={"status": "up-to-date", "rows_computed": 0, "wall_seconds": round(time.time() - t_start, 3)})
    if not plan.sources:
        logger.info("no input files to process")
        return RunSummary(run_id=plan.run_id, status="up-to-date", output=spec.output.path)

    pending = committer.pending_publish()
    if pending:  # a publish was interrupted: finish it, nothing to compute
        logger.info("finishing the interrupted publish of run %s", plan.run_id)
        committer.execute_publish(pending)
        entry = {**(entry or {}), "status": "published"}
        store.write_json(plan.ledger_rel, entry)
        return RunSummary.model_validate(
            {**entry.get("summary", {}), "run_id": plan.run_id, "output": spec.output.path, "status": "published", "rows_computed": 0}
        )

    parts = committer.committed_parts()
    if parts:
        logger.info("resuming run %s: %d parts (%d rows) already committed", plan.run_id, len(parts), sum(p["rows"] for p in parts))
    inputs = [{"uri": s.uri, "fingerprint": s.fingerprint, "size": s.size} for s in plan.sources]
    entry = {
        "run_id": plan.run_id, "config": plan.config_fp, "status": "running", "model": plan.model_path,
        "output": spec.output.path, "inputs": inputs, "started_at": (entry or {}).get("started_at", t_start),
        "tasks": list(spec.tasks.enabled()),
    }
    store.write_json(plan.ledger_rel, entry)

    computed = execute_plan(plan, parts, interactive)

    parts = committer.committed_parts()
    counted = totals(parts, store)
    t_pub = time.perf_counter()
    manifest = committer.publish(parts, append=plan.append, meta={"config": plan.config_fp, "compat": plan.compat_fp, "model": plan.model_path})
    summary = RunSummary(
        run_id=plan.run_id,
        status="published",
        output=spec.output.path,
        model=plan.model_path,
        input_files=len(plan.sources),
        rows_computed=computed["rows"],
        rows_resumed=counted["rows"] - computed["rows"],
        version=manifest["version"],
        publish_seconds=round(time.perf_counter() - t_pub, 3),
        wall_seconds=round(time.time() - t_start, 3),
        **counted,
        **throughput(computed, t_start),
        evaluation=evaluation_summary(spec),
    )
    entry.update(status="published", finished_at=time.time(), summary=summary.to_json())
    store.write_json(plan.ledger_rel, entry)
    store.write_json("summary.json", summary.to_json())
    return summary
