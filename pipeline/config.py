"""Typed models of a job: input, output, tasks, model, engine, resources.

A job spec (YAML) and the CLI flags both become a `JobSpec`; validation happens here,
before any engine or cluster starts, and errors name the offending field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, create_model, field_validator, model_validator

from pipeline.tasks.base import TaskConfig
from pipeline.tasks.registry import TASKS
from pipeline.typed import StrictModel as _Model

TASK_NAMES = tuple(TASKS)


class InputConfig(_Model):
    paths: list[str] = Field(
        min_length=1,
        description="Files, folders, globs or URIs (s3://, gs://, http(s)://). Folders are read recursively.",
    )
    format: Literal["auto", "jsonl", "csv", "text", "parquet"] = Field(
        "auto", description="Record format; 'auto' picks it from the extension (after .gz/.bz2/.zst)."
    )
    text_field: str = Field("text", description="Column holding the document text (ignored for plain text).")
    id_field: Optional[str] = Field(
        None,
        description="Column holding a unique row id. Without it, ids are '<source uri>#<position>', stable across runs.",
    )
    csv_delimiter: Optional[str] = Field(
        None,
        min_length=1,
        max_length=1,
        description="CSV field delimiter. Unset: a tab for .tsv files, a comma for the others.",
    )
    # How remote inputs (http(s)://, s3://, gs://) are read and listed. They change no result,
    # so they are left out of the result fingerprint.
    connect_timeout_s: float = Field(
        10, gt=0, description="Seconds to wait for a remote input's server to accept a connection."
    )
    read_timeout_s: float = Field(
        60,
        gt=0,
        description="Seconds a remote read may wait for its next bytes; a stalled stream fails the attempt (then retried).",
    )
    read_retries: int = Field(
        5,
        ge=0,
        description="Retries of a failed remote open, read or listing (timeouts, dropped connections, HTTP 5xx and 429, "
        "S3 throttling) before the rows left become a read_error; the count restarts whenever bytes arrive. "
        "A read resumes at its byte offset (HTTP Range) where the server allows, else restarts and skips.",
    )
    retry_backoff_s: float = Field(
        1.0, ge=0, description="Wait before the first retry; doubled for each further one (with jitter)."
    )
    retry_backoff_max_s: float = Field(30.0, ge=0, description="Longest wait between two retries.")
    duplicate_ids: Literal["error", "fail"] = Field(
        "error",
        description="With id_field: a row whose id an earlier row already has (1 and \"1\" are the same id). "
        "'error': the first occurrence is kept, later ones become duplicate_id error records; 'fail': the run "
        "fails before publishing, naming them.",
    )


TRANSPORT_FIELDS = ("connect_timeout_s", "read_timeout_s", "read_retries", "retry_backoff_s", "retry_backoff_max_s")


class OutputConfig(_Model):
    path: str = Field(description="Output folder (local path or s3:// URI). Holds one Parquet dataset per task.")
    rows_per_unit: int = Field(
        1000,
        ge=1,
        description="Rows per commit unit: the granularity of atomic commits and of resume after a crash.",
    )
    target_file_mib: float = Field(
        64, gt=0, description="Published files of one input file are merged up to about this size (fewer, larger files)."
    )
    retention_hours: float = Field(
        168,
        ge=0,
        description="Files of replaced versions, abandoned staging folders and temp files are deleted once older "
        "than this (readers of the previous version keep working meanwhile; a killed run resumes within it).",
    )
    lease_ttl_s: float = Field(
        60,
        gt=0,
        description="A writer's lease on the output expires this long after its last heartbeat, so a crashed "
        "driver's output is taken over (at once on the same host); keep it well above clock skew between hosts.",
    )


class _TasksBase(_Model):
    @model_validator(mode="after")
    def _at_least_one(self) -> "_TasksBase":
        if not self.enabled():
            raise ValueError(f"at least one task is required ({', '.join(TASK_NAMES)})")
        return self

    def enabled(self) -> dict[str, TaskConfig]:
        """The enabled tasks' configs, in registry order (fixed, so output and prompts are deterministic)."""
        return {n: getattr(self, n) for n in TASK_NAMES if getattr(self, n) is not None}


# One optional field per registered task (pipeline/tasks/registry.py is the one place a task
# is declared: its config model, its class, and from them its CLI flags).
TasksConfig = create_model(
    "TasksConfig",
    __base__=_TasksBase,
    __doc__="The tasks to run on every row; each key enables one task with its settings.",
    **{
        name: (Optional[cls.config_model], Field(None, description=cls.description))
        for name, cls in TASKS.items()
    },
)


class ModelConfig(_Model):
    path: Optional[str] = Field(
        None,
        description="Local Hugging Face-format model folder. Default: SmolLM2-135M-Instruct, prepared once into the cache.",
    )


class EngineConfig(_Model):
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses CUDA when the installed vLLM build and a GPU allow it, else the CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="'auto': float32 on CPUs without native bf16 (about 3x faster there), bfloat16 on those with it; the model's dtype on GPUs.",
    )
    max_model_len: int = Field(2048, ge=128, description="Context length (prompt + output tokens).")
    max_num_seqs: int = Field(256, ge=1, description="Most sequences the engine batches at once.")
    kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU only: KV cache size per engine, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only: fraction of GPU memory for vLLM.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes.")
    seed: int = Field(0, description="Engine seed, for reproducible sampling.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (tensor parallelism).")
    enforce_eager: bool = Field(True, description="Skip graph capture: faster start-up, small cost on GPUs.")
    cpu_threads: Optional[int] = Field(None, ge=1, description="CPU only: OpenMP threads per engine (default: the actor's CPUs).")
    context_policy: Optional[Literal["split", "truncate", "reject"]] = Field(
        None,
        description="Text too long for one request, for every task that does not set its own context_policy: "
        "'split' it into parts (the tasks' default; see tasks.*.context_policy), 'truncate' it (its start kept, "
        "input_truncated=true) or 'reject' it (an error record of kind too_long). Unset: each task's own default.",
    )
    request_retries: int = Field(
        1,
        ge=0,
        description="Times a failed request (a whole text, or one part of a split one) is sent again before "
        "its row becomes an error record (generation_error).",
    )
    max_requests_in_flight: Optional[int] = Field(
        None,
        ge=1,
        description="Most requests an engine holds at once, from all rows and batches together (a split text "
        "is many requests); the rest wait their turn in order. Default: 2 x max_num_seqs, so the engine's batch "
        "is always full and its waiting queue short.",
    )
    hang_timeout_s: float = Field(
        600,
        gt=0,
        description="An engine that finishes no request for this long while busy is treated as dead (actor restarted).",
    )
    batch_rows: int = Field(
        256, ge=1, description="Rows handed to an engine at once; each becomes one request per task, all in flight together."
    )
    batches_in_flight: int = Field(
        2,
        ge=1,
        description="Batches an actor keeps in its engine at once, so the next batch's requests are queued "
        "while the last one's slowest rows finish (continuous batching never runs dry).",
    )
    block_size: Optional[int] = Field(
        None,
        ge=1,
        description="KV-cache block size in tokens. Unset: 32 on the CPU (vLLM's CPU default, 128, is longer than "
        "the tasks' shared instruction prefix, and prefix caching reuses whole blocks only), vLLM's default on GPUs.",
    )


class ResourcesConfig(_Model):
    actors: int = Field(1, ge=1, description="Inference actors, one vLLM engine each.")
    cpus_per_actor: float = Field(1, gt=0, description="Logical CPUs reserved per actor.")
    gpus_per_actor: Optional[float] = Field(
        None, ge=0, description="GPUs per actor; default tensor_parallel_size on CUDA, 0 on the CPU."
    )
    max_actor_restarts: int = Field(
        3, ge=0, description="Restarts per inference actor (engine death, hang, lost node) before the run fails."
    )
    ray_address: Optional[str] = Field(
        None, description="Ray cluster to join ('auto', 'ray://host:10001'); default starts a local one in-process."
    )
    num_cpus: Optional[int] = Field(None, ge=1, description="Logical CPUs of the in-process local cluster.")


class EvaluationConfig(_Model):
    """Gold labels or reference texts in the input, to grade a run's outputs against.

    Kept apart from `input` on purpose: the model never reads these columns, so they are
    not part of the result fingerprint (adding or changing them never recomputes a run).
    """

    references: dict[str, str] = Field(
        min_length=1,
        description="Task -> input column holding its gold label (sentiment) or reference text (summarization, "
        "translation), e.g. {sentiment: label}. The run summary then gives accuracy and macro-F1, ROUGE-1/2/L, "
        "or chrF and BLEU against it.",
    )
    label_map: dict[str, str] = Field(
        default_factory=dict,
        description="Sentiment: gold values -> the task's labels, e.g. {'1': positive, '0': negative}. "
        "Values not in the map are compared as written (case-insensitive).",
    )


class JobSpec(_Model):
    input: InputConfig
    output: OutputConfig
    tasks: TasksConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    incremental: bool = Field(
        False, description="Process only input files that no earlier run committed (nightly runs over a growing folder)."
    )
    schedule: Optional[str] = Field(
        None,
        description="When to run this job, in standard 5-field cron syntax ('0 2 * * *') or a macro (@daily, "
        "@hourly, ...). Used only by `pipeline schedule`, which renders it for crontab, systemd or Kubernetes; "
        "a scheduled run is always incremental. It does not change results (not part of the run id).",
    )

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        from pipeline.ops.cron import check_cron

        return check_cron(v)

    evaluation: Optional[EvaluationConfig] = Field(
        None, description="Grade the outputs against gold columns of the input; metrics land in the run summary."
    )

    @model_validator(mode="after")
    def _references_name_enabled_tasks(self) -> "JobSpec":
        if self.evaluation is not None:
            off = sorted(set(self.evaluation.references) - set(self.tasks.enabled()))
            if off:
                raise ValueError(f"evaluation.references names tasks that are not enabled: {', '.join(off)}")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "JobSpec":
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a job spec is a YAML mapping, got {type(data).__name__}")
        base = Path(path).resolve().parent
        _resolve_relative_paths(data, base)
        return cls.model_validate(deep_merge(data, overrides or {}))

    def result_fingerprint(
        self, model_id: str, environment: Optional[dict[str, Any]] = None, admission: bool = True
    ) -> str:
        """Hash of everything that changes results: a new value means a new run, never mixed output.

        `environment`: what outside the spec changes results (pipeline and engine versions,
        the resolved dtype: `pipeline.batch.plan.result_environment`). `admission=False`
        leaves out the settings that only decide whether a text fits the context
        (max_model_len, context_policy): what `retry-errors` may change for the rows it retries.
        """
        engine = {"dtype", "seed", "tensor_parallel_size"} | ({"max_model_len", "context_policy"} if admission else set())
        tasks = self.tasks.model_dump()
        if not admission:  # a task's own context_policy too
            tasks = {name: {k: v for k, v in t.items() if k != "context_policy"} if t else t for name, t in tasks.items()}
        relevant = {
            "input": self.input.model_dump(exclude={"paths", *TRANSPORT_FIELDS}),
            "tasks": tasks,
            "model": model_id,
            "engine": self.engine.model_dump(include=engine),
            "environment": environment or {},
        }
        blob = json.dumps(relevant, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Paths in a spec are relative to the spec file, so a spec runs from any directory."""

    def fix(p: str) -> str:
        if "://" in p or Path(p).is_absolute():
            return p
        return str((base / p).resolve()) if not p.startswith("~") else str(Path(p).expanduser())

    inp = data.get("input")
    if isinstance(inp, dict) and isinstance(inp.get("paths"), list):
        inp["paths"] = [fix(p) if isinstance(p, str) else p for p in inp["paths"]]
    out = data.get("output")
    if isinstance(out, dict) and isinstance(out.get("path"), str):
        out["path"] = fix(out["path"])
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str):
        model["path"] = fix(model["path"])
