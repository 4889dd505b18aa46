"""Dead letters: recompute published error records of chosen kinds into the same output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import posixpath
import time
from collections import defaultdict
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.batch.execution import execute_plan
from pipeline.batch.plan import RunError, make_plan
from pipeline.batch.summary import RunSummary, totals
from pipeline.config import JobSpec
from pipeline.errors import ErrorKind
from pipeline.io.commit import ERRORS, read_manifest

logger = logging.getLogger(__name__)

RETRYABLE_KINDS = tuple(k.value for k in (
    ErrorKind.GENERATION_ERROR, ErrorKind.INVALID_OUTPUT, ErrorKind.TOO_LONG, ErrorKind.TRUNCATED_OUTPUT, ErrorKind.READ_ERROR
))


def retry_errors(
    spec: JobSpec, kinds: tuple[str, ...] = RETRYABLE_KINDS, interactive: Optional[bool] = None, force: bool = False
) -> RunSummary:
    """Reprocess the published error records of the given kinds into the same output.

    Each (row, task) in error is computed again with the spec as given (for example a larger
    max_model_len, or context_policy: truncate); its old error record is taken out of the
    errors dataset and its new result (or new error) goes in, in one manifest switch, so
    every row stays exactly once per task.

    The spec must be the one the output was published with, but for the settings that
    decide whether a text fits (engine.max_model_len, engine.context_policy and the tasks'
    own context_policy): otherwise the
    retried rows would come from another model or prompt than their neighbours. `force`
    overrides that check.
    """
    import pyarrow.parquet as pq

    t_start = time.time()
    base = make_plan(spec)
    store = base.store
    manifest = read_manifest(store)
    if manifest is None:
        raise RunError(f"{spec.output.path} has no published output to retry")
    published = manifest.get("compat")
    if published and published != base.compat_fp and not force:
        raise RunError(
            f"{spec.output.path} was published with another configuration (model, prompts, sampling, reader "
            "options or engine versions differ from this spec): retried rows would not match the others. Use the "
            "spec it was published with (only max_model_len and the context policies may change), "
            "or pass --force to mix them knowingly."
        )
    enabled = set(spec.tasks.enabled())
    select: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    hit_files = []
    for rel in manifest["datasets"].get(ERRORS, []):
        with store.fs.open_input_file(store.path(rel)) as f:
            t = pq.read_table(f)
        mask = pc.and_(pc.is_in(t["error_kind"], pa.array(list(kinds))), pc.is_in(t["task"], pa.array(sorted(enabled))))
        chosen = t.filter(mask)
        if chosen.num_rows:
            hit_files.append((rel, t.filter(pc.invert(mask))))
            for src, pos, task in zip(chosen["source"].to_pylist(), chosen["position"].to_pylist(), chosen["task"].to_pylist()):
                select[src][str(pos)].add(task)
    n = sum(len(v) for v in select.values())
    if not n:
        logger.info("no error records of kinds %s to retry", ", ".join(kinds))
        return RunSummary(run_id="-", status="up-to-date", kind="retry-errors", output=spec.output.path)

    by_uri = {s.uri: s for s in base.sources}
    missing = sorted(set(select) - set(by_uri))
    if missing:
        raise RunError(f"cannot retry rows of inputs the job no longer lists: {', '.join(missing[:3])}")
    sel = {u: {p: ",".join(sorted(ts)) for p, ts in rows.items()} for u, rows in select.items()}
    h = hashlib.sha256(f"{manifest['version']}|{base.config_fp}|{json.dumps(sel, sort_keys=True)}".encode())
    run_id = "retry-" + h.hexdigest()[:8]
    plan = dataclasses.replace(base, run_id=run_id, sources=[by_uri[u] for u in sorted(select)], append=True)
    committer = plan.committer
    pending = committer.pending_publish()
    if pending:
        committer.execute_publish(pending)
        return RunSummary(run_id=run_id, status="published", kind="retry-errors", output=spec.output.path)

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
    ledger_rel = f"_runs/{run_id}.json"
    entry = {"run_id": run_id, "config": plan.config_fp, "status": "running", "kind": "retry-errors",
             "retried_kinds": list(kinds), "model": plan.model_path, "output": spec.output.path,
             "inputs": [{"uri": s.uri, "fingerprint": s.fingerprint, "size": s.size} for s in plan.sources],
             "started_at": t_start, "tasks": sorted(enabled)}
    store.write_json(ledger_rel, entry)
    computed = execute_plan(plan, committer.committed_parts(), interactive, select=sel)
    parts = committer.committed_parts()
    counted = totals(parts, store)
    manifest = committer.publish(parts, append=True, meta={"config": manifest.get("config"), "compat": published, "model": plan.model_path}, rewrites=rewrites)
    summary = RunSummary(
        run_id=run_id, status="published", kind="retry-errors", output=spec.output.path, model=plan.model_path,
        input_files=len(plan.sources), rows_computed=computed["rows"], rows_resumed=counted["rows"] - computed["rows"],
        wall_seconds=round(time.time() - t_start, 3), version=manifest["version"], **counted,
    )
    entry.update(status="published", finished_at=time.time(), summary=summary.to_json())
    store.write_json(ledger_rel, entry)
    return summary
