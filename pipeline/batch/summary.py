"""A run's summary: what it computed, what failed and why, what it cost, where time went.

`RunSummary` is the one shape `run()` and `retry_errors()` return, the CLI prints, and
`OUT/summary.json` and the ledger (`OUT/_runs/<run>.json`) store.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import Counter, defaultdict
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import ErrorKind
from pipeline.eval.records import RunEvaluation
from pipeline.io.commit import ERRORS
from pipeline.io.coverage import FileCoverage
from pipeline.io.records import PartRecord
from pipeline.io.store import Store

logger = logging.getLogger(__name__)


class TaskCounts(BaseModel):
    ok: int = Field(0, description="Rows with a result.")
    error: int = Field(0, description="Rows with an error record instead.")
    truncated: int = Field(0, description="Of the ok rows: answers cut at max_tokens or empty (output_truncated).")


class StartupBreakdown(BaseModel):
    plan: float = Field(description="Listing and fingerprinting inputs, resolving the model.")
    ray_init: float = Field(description="Starting or joining the Ray cluster.")
    until_actor: float = Field(description="Until the first inference actor ran (scheduling, worker start).")
    actor_to_engine_ready: float = Field(description="The actor's imports and engine load.")


class EngineFacts(BaseModel):
    model_config = ConfigDict(extra="ignore")

    device: Optional[str] = None
    dtype: Optional[str] = None
    cpu_bind: Optional[str] = Field(None, description="CPU: the cores its compute threads were bound to (VLLM_CPU_OMP_THREADS_BIND).")
    compute_threads: Optional[int] = Field(None, description="CPU: OpenMP threads of vLLM's worker (read from its environment).")


class FlopUtilization(BaseModel):
    """Model FLOPs per second after start-up over the machine's measured matrix peak
    (pipeline/engine/flops.py says how both are counted)."""

    model_config = ConfigDict(extra="ignore")

    gflops_per_second: float = Field(description="Model FLOPs of the run's tokens over the seconds after start-up, in GFLOP/s.")
    peak_gflops: Optional[float] = Field(None, description="Sum of the engines' measured matrix peaks (same dtype and threads); None: not measured.")
    mfu: Optional[float] = Field(None, description="gflops_per_second / peak_gflops.")
    basis: str = Field(description="How the FLOPs were counted.")
    note: Optional[str] = Field(None, description="Why there is no MFU, when there is none.")


class RunSummary(BaseModel):
    # Ledgers written by other versions may hold fields this one lacks: ignore them.
    model_config = ConfigDict(extra="ignore")

    run_id: str
    status: Literal["published", "up-to-date", "failed"]
    output: str = ""
    kind: Literal["run", "retry-errors"] = "run"
    model: Optional[str] = None
    input_files: int = 0
    rows: int = Field(0, description="Input rows covered by this run (computed now or resumed).")
    rows_computed: int = 0
    rows_resumed: int = 0
    tasks: dict[str, TaskCounts] = Field(default_factory=dict)
    error_kinds: dict[str, int] = Field(default_factory=dict, description="Error records by kind (per row and task).")
    read_errors_of_unknown_extent: int = Field(
        0, description="Input files whose tail could never be read and whose record count is unknown: their read "
        "error stands for an unknown number of rows (counted as one)."
    )
    prompt_tokens: int = 0
    output_tokens: int = 0
    wall_seconds: Optional[float] = None
    version: Optional[int] = Field(None, description="The manifest version this run published.")
    # Throughput over the pipeline (engine start-up included) and after start-up.
    pipeline_seconds: Optional[float] = None
    rows_per_second: Optional[float] = None
    output_tokens_per_second: Optional[float] = None
    startup_seconds: Optional[float] = None
    engine_load_seconds: Optional[float] = None
    startup_breakdown: Optional[StartupBreakdown] = None
    steady_seconds: Optional[float] = Field(
        None, description="From the first engine ready to the last part committed: the window of the *_after_startup rates."
    )
    rows_per_second_after_startup: Optional[float] = None
    output_tokens_per_second_after_startup: Optional[float] = None
    tokens_per_second_after_startup: Optional[float] = Field(
        None, description="Prompt + output tokens per second after start-up: what prefill-heavy tasks are judged by."
    )
    flop_utilization: Optional[FlopUtilization] = None
    engines: list[EngineFacts] = Field(default_factory=list, description="What each engine ran on (first start of each actor).")
    prefix_cache_hit_rate: Optional[float] = None
    read_seconds: Optional[float] = Field(None, description="The read stage, first unit to last file (overlaps inference).")
    # What exactly-once costs: part writes and commit records (in the actors, summed) and the publish.
    commit_seconds: Optional[float] = None
    publish_seconds: Optional[float] = Field(None, description="Coverage proof, duplicate-id check, moves and merges, the manifest switch.")
    # Where the actors' time went, summed over actors and batches in flight.
    actor_prepare_seconds: Optional[float] = None
    actor_generate_seconds: Optional[float] = None
    actor_batch_seconds: Optional[float] = None
    # Quality signals of every task's outputs; metrics against the spec's gold columns.
    evaluation: Optional[RunEvaluation] = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def totals(parts: list[PartRecord], store: Store, coverage: Optional[dict[str, FileCoverage]] = None) -> dict[str, Any]:
    """Rows, tokens, per-task counts and error kinds over committed parts (kinds are read
    from the parts' error files: small, one column). A read error stands for every record
    from its position on that no part holds: `coverage` says how many, and they are counted
    as rows in error (for every task), so that rows + errors = input rows."""
    import pyarrow.parquet as pq

    tasks: dict[str, Counter] = defaultdict(Counter)
    sums: Counter = Counter()
    kinds: Counter = Counter()
    for p in parts:
        sums["rows"] += p.rows
        sums["prompt_tokens"] += p.prompt_tokens
        sums["output_tokens"] += p.output_tokens
        for t, c in p.counts.items():
            for k, v in c.model_dump().items():
                tasks[t][k] += v
        if ERRORS in p.files:
            with store.fs.open_input_file(store.path(p.files[ERRORS].path)) as f:
                for k in pq.read_table(f, columns=["error_kind"])["error_kind"].to_pylist():
                    kinds[k] += 1
    unknown = 0
    for cov in (coverage or {}).values():
        extra = cov.read_error_rows - len(cov.read_errors)
        if not cov.extent_known:
            unknown += 1
        if extra > 0:
            sums["rows"] += extra
            for t in tasks:
                tasks[t]["error"] += extra
                kinds[ErrorKind.READ_ERROR.value] += extra
    return {
        "rows": sums["rows"],
        "prompt_tokens": sums["prompt_tokens"],
        "output_tokens": sums["output_tokens"],
        "tasks": {t: TaskCounts(**c) for t, c in tasks.items()},
        "error_kinds": dict(kinds),
        "read_errors_of_unknown_extent": unknown,
    }


def throughput(computed: dict[str, Any], t_start: float, model_path: Optional[str] = None, tasks: int = 1) -> dict[str, Any]:
    """Throughput and start-up fields from what the execution measured. With `model_path`,
    the model FLOP utilization after start-up too (`tasks`: requests per row)."""
    out: dict[str, Any] = {}
    facts = [EngineFacts.model_validate(e) for e in computed.get("engines", [])]
    if facts:
        out["engines"] = facts
    inference_s = computed.get("seconds", 0.0)
    if inference_s:
        out["rows_per_second"] = round(computed["rows"] / inference_s, 2)
        out["output_tokens_per_second"] = round(computed["output_tokens"] / inference_s, 2)
        out["pipeline_seconds"] = round(inference_s, 3)
    if "first_engine_ready_at" in computed:
        # Throughput once the first engine was up: what the run costs per token at scale,
        # apart from a fixed start-up (cluster, actors, model load) and the wind-down after
        # the last commit (engines stopping, Ray's actor pool ending).
        end = computed.get("last_commit_at") or time.time()
        steady = end - computed["first_engine_ready_at"]
        out["startup_seconds"] = round(computed["first_engine_ready_at"] - t_start, 3)
        out["engine_load_seconds"] = computed["engine_load_seconds"]
        out["startup_breakdown"] = StartupBreakdown(
            plan=round(computed["ray_started_at"] - t_start, 3),
            ray_init=round(computed["ray_ready_at"] - computed["ray_started_at"], 3),
            until_actor=round(computed["first_actor_created_at"] - computed["ray_ready_at"], 3),
            actor_to_engine_ready=round(computed["first_engine_ready_at"] - computed["first_actor_created_at"], 3),
        )
        out["steady_seconds"] = round(steady, 3)
        if steady > 0:
            out["output_tokens_per_second_after_startup"] = round(computed["output_tokens"] / steady, 2)
            out["tokens_per_second_after_startup"] = round((computed["prompt_tokens"] + computed["output_tokens"]) / steady, 2)
            out["rows_per_second_after_startup"] = round(computed["rows"] / steady, 2)
            if model_path:
                # The engines serving at once: a restarted actor's engine replaced another.
                live = facts[-computed["actors"]:] if computed.get("actors") else facts
                util = flop_utilization(model_path, computed, steady, live, tasks)
                if util is not None:
                    out["flop_utilization"] = util
    for k in ("prefix_cache_hit_rate", "read_seconds"):
        if k in computed:
            out[k] = computed[k]
    out["commit_seconds"] = round(computed.get("commit_seconds", 0.0), 3)
    for k in ("prepare_seconds", "generate_seconds", "batch_seconds"):
        out[f"actor_{k}"] = round(computed.get(k, 0.0), 3)
    return out


def flop_utilization(model_path: str, computed: dict[str, Any], seconds: float, engines: list[EngineFacts],
                     tasks: int) -> Optional[FlopUtilization]:
    """MFU of a run on CPU engines (GPU peaks are not measured here: None on GPUs)."""
    from pipeline.engine.flops import ModelFlops, ensure_peak, utilization

    if not engines or any(e.device != "cpu" for e in engines):
        return None
    try:
        model = ModelFlops.from_model(model_path)
    except (OSError, ValueError, KeyError) as e:
        return FlopUtilization(gflops_per_second=0.0, basis="", note=f"FLOPs per token unknown for this model: {e}")
    if any(e.compute_threads is None or e.dtype is None for e in engines):
        return FlopUtilization(gflops_per_second=0.0, basis=model.basis(), note="engine threads or dtype unknown")
    try:  # after the run: its engines no longer compete for the cores
        for e in engines:
            ensure_peak(e.dtype, e.compute_threads)  # type: ignore[arg-type]
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        logger.warning("could not measure the matrix peak: %s", err)
    u = utilization(model, computed["prompt_tokens"], computed["output_tokens"], max(1, computed["rows"] * tasks), seconds,
                    [(e.dtype, e.compute_threads) for e in engines],  # type: ignore[misc]
                    computed.get("prefix_cache_hit_rate"))
    return FlopUtilization(gflops_per_second=round(u.gflops_per_second, 2),
                           peak_gflops=None if u.peak_gflops is None else round(u.peak_gflops, 1),
                           mfu=None if u.mfu is None else round(u.mfu, 4), basis=u.basis, note=u.note)
