"""What a report is made of, gathered from an output folder: the run's ledger and summary,
its timeline, and the columns of its published rows and error records that the charts use.

Only what the ledger, the timeline and the manifest point at is read, and of the datasets
only a few small columns of the run's own rows (an output that several incremental runs
appended to holds other runs' rows too).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.batch.progress import TIMELINE_NAME
from pipeline.batch.summary import RunSummary
from pipeline.errors import PipelineError
from pipeline.io.commit import ERRORS, read_manifest
from pipeline.io.store import Store

TASK_COLUMNS = ["row_id", "output_tokens", "prompt_tokens", "output_truncated", "input_truncated", "finish_reason"]
ERROR_COLUMNS = ["row_id", "task", "error_kind", "error_message", "source", "position"]
EXAMPLES_PER_KIND = 3


class ReportError(PipelineError):
    """The output folder holds no run to report on."""


@dataclasses.dataclass
class ErrorKindFacts:
    kind: str
    count: int
    tasks: dict[str, int]
    examples: list[dict[str, Any]]  # row_id, task, message


@dataclasses.dataclass
class TaskFacts:
    name: str
    rows: int
    errors: int
    output_truncated: int
    input_truncated: int
    prompt_tokens: int
    output_tokens: int
    output_lengths: list[int]  # output tokens of every ok row (for the distribution)
    labels: dict[str, int]  # sentiment: label -> rows


@dataclasses.dataclass
class RunFacts:
    output: str
    run_id: str
    ledger: dict[str, Any]
    summary: RunSummary
    timeline: list[dict[str, Any]]
    tasks: list[TaskFacts]
    errors: list[ErrorKindFacts]
    log_uri: Optional[str]

    @property
    def run_dir(self) -> str:
        return f"_runs/{self.run_id}"


def load_run(output: str, run_id: Optional[str] = None) -> RunFacts:
    store = Store(output)
    if run_id is None:
        last = store.read_json("summary.json")
        if not last:
            runs = sorted((e for e in (store.read_json(r) for r in store.list("_runs", suffix=".json")) if e),
                          key=lambda e: e.get("started_at", 0))
            if not runs:
                raise ReportError(f"{output} holds no run (no summary.json, no _runs/*.json)")
            last = {"run_id": runs[-1]["run_id"]}
        run_id = last["run_id"]
    ledger = store.read_json(f"_runs/{run_id}.json")
    if ledger is None:
        raise ReportError(f"{output} has no run {run_id} (no _runs/{run_id}.json); `pipeline runs {output}` lists them")
    summary = RunSummary.model_validate(
        {"status": ledger.get("status") if ledger.get("status") in ("published", "failed") else "failed",
         "output": output, **(ledger.get("summary") or {}), "run_id": run_id}
    )
    timeline = _read_timeline(store, run_id)
    tasks, errors = _read_rows(store, run_id, ledger.get("tasks") or list(summary.tasks))
    log_rel = f"_runs/{run_id}/pipeline.log"
    return RunFacts(output, run_id, ledger, summary, timeline, tasks, errors,
                    store.uri(log_rel) if store.exists(log_rel) else None)


def _read_timeline(store: Store, run_id: str) -> list[dict[str, Any]]:
    rel = f"_runs/{run_id}/{TIMELINE_NAME}"
    if not store.exists(rel):
        return []
    out = []
    for line in store.read_bytes(rel).decode().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash mid-write
    return out


def _dataset(store: Store, datasets: dict[str, list[str]], name: str, columns: list[str], run_id: str) -> Optional[pa.Table]:
    import pyarrow.dataset as pads

    files = [store.path(f) for f in datasets.get(name, [])]
    if not files:
        return None
    ds = pads.dataset(files, filesystem=store.fs, format="parquet")
    cols = [c for c in columns if c in ds.schema.names]
    return ds.to_table(columns=cols, filter=pc.field("run_id") == run_id)


def _read_rows(store: Store, run_id: str, task_names: list[str]) -> tuple[list[TaskFacts], list[ErrorKindFacts]]:
    manifest = read_manifest(store)
    datasets = manifest.datasets if manifest is not None else {}
    err = _dataset(store, datasets, ERRORS, ERROR_COLUMNS, run_id)
    err_by_task: Counter = Counter(err["task"].to_pylist()) if err is not None else Counter()
    tasks = []
    for name in task_names:
        cols = TASK_COLUMNS + (["label"] if name == "sentiment" else [])
        t = _dataset(store, datasets, name, cols, run_id)
        if t is None:
            t = pa.table({c: pa.array([], pa.int64()) for c in ("output_tokens", "prompt_tokens")})
        lengths = t["output_tokens"].to_pylist()

        def count(col: str) -> int:
            return int(pc.sum(t[col]).as_py() or 0) if col in t.column_names else 0

        labels = dict(Counter(t["label"].to_pylist())) if "label" in t.column_names else {}
        tasks.append(TaskFacts(
            name=name, rows=t.num_rows, errors=err_by_task.get(name, 0),
            output_truncated=count("output_truncated"), input_truncated=count("input_truncated"),
            prompt_tokens=count("prompt_tokens"), output_tokens=count("output_tokens"),
            output_lengths=[x for x in lengths if x is not None], labels=labels,
        ))
    kinds: list[ErrorKindFacts] = []
    if err is not None and err.num_rows:
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(err["error_kind"].to_pylist()):
            by_kind[k].append(i)
        rows = err.to_pylist()
        for k, idx in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
            seen_msgs, examples = set(), []
            for i in idx:  # examples with different messages first: they say more
                msg = rows[i]["error_message"] or ""
                if msg in seen_msgs:
                    continue
                seen_msgs.add(msg)
                examples.append({"row_id": rows[i]["row_id"], "task": rows[i]["task"], "message": msg})
                if len(examples) == EXAMPLES_PER_KIND:
                    break
            kinds.append(ErrorKindFacts(k, len(idx), dict(Counter(rows[i]["task"] for i in idx)), examples))
    return tasks, kinds


@dataclasses.dataclass
class TimeSlice:
    label: str
    seconds: float
    note: str = ""


def wall_time(s: RunSummary) -> list[TimeSlice]:
    """Where the wall time went, in order, adding up to the wall time (what is not measured
    apart is 'other')."""
    out: list[TimeSlice] = []
    b = s.startup_breakdown
    if b is not None:
        out += [
            TimeSlice("plan", b.plan, "listing inputs, resolving the model"),
            TimeSlice("Ray start", b.ray_init, "starting or joining the cluster"),
            TimeSlice("until first actor", b.until_actor, "scheduling, worker start"),
            TimeSlice("engine start-up", b.actor_to_engine_ready, "imports and model load"),
        ]
    if s.steady_seconds is not None:
        out.append(TimeSlice("processing", s.steady_seconds,
                             "reading, inference and part commits, from the first engine up to the last commit"))
    if s.publish_seconds is not None:
        out.append(TimeSlice("publish", s.publish_seconds, "coverage check and manifest switch"))
    if s.wall_seconds is not None:
        rest = s.wall_seconds - sum(x.seconds for x in out)
        if rest > 0.05:
            out.append(TimeSlice("other", rest, "engines stopping, coverage check, summary, ledger, shutdown"))
    return out


def actor_time(s: RunSummary) -> list[TimeSlice]:
    """Inside the actors, summed over actors and batches in flight (so it can exceed wall
    time), and the read stage (which overlaps everything else)."""
    summed = "summed over actors and batches in flight"
    out = []
    if s.actor_prepare_seconds is not None:
        out.append(TimeSlice("rendering prompts", s.actor_prepare_seconds, summed))
    if s.actor_generate_seconds is not None:
        out.append(TimeSlice("waiting on the engine", s.actor_generate_seconds, summed))
    if s.commit_seconds is not None:
        out.append(TimeSlice("committing parts", s.commit_seconds, summed))
    if s.read_seconds is not None:
        out.append(TimeSlice("reading", s.read_seconds, "the read stage, first unit to last file (overlaps the rest)"))
    return out
