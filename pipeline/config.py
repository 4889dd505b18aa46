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
from pipeline.typed import optional_fields

TASK_NAMES = tuple(TASKS)
# Formats whose rows only some tasks can answer: format -> those tasks.
INPUT_FORMATS_OF_TASKS: dict[str, list[str]] = {}
for _name, _cls in TASKS.items():
    if _cls.input_format is not None:
        INPUT_FORMATS_OF_TASKS.setdefault(_cls.input_format, []).append(_name)


class InputConfig(_Model):
    paths: list[str] = Field(
        min_length=1,
        description="Files, folders, globs or URIs (s3://, gs://, http(s)://). Folders are read recursively.",
    )
    format: Literal["auto", "jsonl", "csv", "text", "parquet", "openai_batch"] = Field(
        "auto",
        description="Record format; 'auto' picks it from the extension (after .gz/.bz2/.zst). 'openai_batch': "
        "OpenAI batch request lines (custom_id, method, url, body), answered by the chat task; never picked by "
        "'auto', since such files are .jsonl too.",
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


    @model_validator(mode="before")
    @classmethod
    def _batch_ids(cls, data: Any) -> Any:
        """An OpenAI batch file's row id is each line's custom_id, unique per file as OpenAI
        requires of one batch (the reader finds duplicates). id_field stays unset, so that the
        output-wide duplicate check does not apply: the next batch file of an incremental job
        may use the same custom_ids again, as batches do."""
        if isinstance(data, dict) and data.get("format") == "openai_batch" and data.get("id_field") is not None:
            raise ValueError("input.format openai_batch: the row id is each line's custom_id; leave id_field unset")
        return data


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
    max_model_len: Optional[int] = Field(
        None,
        ge=128,
        description="Context length (prompt + output tokens). Default: the model's own limit (config.json: "
        "max_position_embeddings, ...), capped by what the KV cache holds (CPU: kv_cache_gib). A larger value "
        "fails before anything starts, naming the limit.",
    )
    max_num_seqs: int = Field(256, ge=1, description="Most sequences the engine batches at once.")
    kv_cache_gib: float = Field(
        1.0, gt=0, description="CPU only: KV cache size per engine, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="GPU only: fraction of GPU memory for vLLM.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes.")
    seed: int = Field(0, description="Engine seed, for reproducible sampling.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (tensor parallelism).")
    enforce_eager: bool = Field(True, description="Skip graph capture: faster start-up, small cost on GPUs.")
    cpu_threads: Optional[int] = Field(
        None, ge=1, description="CPU only: at most this many compute threads per engine (default: one per core of its slot, "
        "minus the reserved ones; pipeline/engine/cpus.py)."
    )
    cpu_bind: Optional[str] = Field(
        None,
        description="CPU only: the cores the engine's compute threads bind to, in VLLM_CPU_OMP_THREADS_BIND syntax "
        "('0-15', '0,2,4'), or 'auto' (vLLM's own choice: it keeps one core per engine for its scheduler) or 'nobind'. "
        "Default: planned from the machine (the cores of the engine's slot; an exported VLLM_CPU_OMP_THREADS_BIND wins).",
    )
    cpu_reserved_cores: Optional[int] = Field(
        None,
        ge=0,
        description="CPU only: cores of each engine's slot kept off its compute threads, for vLLM's scheduler "
        "process, the actor and Ray. Default: 1 in slots of 4 cores or more, 0 below (measured: bench/README.md).",
    )
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
    max_parts_in_flight: Optional[int] = Field(
        None,
        ge=1,
        description="Most requests for parts of split texts an engine holds at once while whole texts are also "
        "arriving (held, waiting, or let in within the last 2 s), so that short rows are not held back behind a "
        "long document's parts; with no whole texts about, parts take every slot. Default: max_num_seqs / 32.",
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
    actors: int = Field(1, ge=1, description="Inference actors, one vLLM engine each (CPU: they split each node's cores).")
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
    metrics_export_port: Optional[int] = Field(
        None,
        ge=1,
        le=65535,
        description="Local cluster only: the port where Ray serves its metrics and the run's (pipeline_*) in "
        "Prometheus format, at /metrics. On a cluster, the nodes' own port (`ray start --metrics-export-port`).",
    )


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

    @model_validator(mode="before")
    @classmethod
    def _batch_file_tasks(cls, data: Any) -> Any:
        """An OpenAI batch file without a task list is answered by the chat task."""
        if isinstance(data, dict) and data.get("tasks") is None:
            inp = data.get("input")
            if isinstance(inp, dict) and inp.get("format") == "openai_batch":
                data = {**data, "tasks": {"chat": {}}}
        return data

    @model_validator(mode="after")
    def _formats_fit_tasks(self) -> "JobSpec":
        """A task that takes its own kind of input (chat: request bodies) needs that format,
        and that format's rows suit no other task."""
        fmt = self.input.format
        for name in self.tasks.enabled():
            wanted = TASKS[name].input_format
            if wanted is not None and wanted != fmt:
                raise ValueError(f"tasks.{name} answers {wanted} request lines: set input.format: {wanted}")
            if wanted is None and fmt in INPUT_FORMATS_OF_TASKS:
                takes = " or ".join(INPUT_FORMATS_OF_TASKS[fmt])
                raise ValueError(f"input.format {fmt}: its rows are requests, which only tasks.{takes} answers; "
                                 f"remove tasks.{name}")
        return self

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
        data = _load_yaml(path, "a job spec")
        _resolve_relative_paths(data, Path(path).resolve().parent)
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


def _load_yaml(path: str | Path, what: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} is a YAML mapping, got {type(data).__name__}")
    return data


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
    auth = data.get("auth")
    if isinstance(auth, dict) and isinstance(auth.get("api_keys_file"), str):
        auth["api_keys_file"] = fix(auth["api_keys_file"])


# =====================================================================================
# The online endpoint (`pipeline serve`): the same model, engine and task models as a job,
# plus what serving needs (HTTP, limits, admission, auth, replicas, health).
# =====================================================================================


def _defaults_model(task_model: type[TaskConfig]) -> type[_Model]:
    """The task's config model with every field optional: server-side defaults for a route.
    A request's parameters are merged over them and the result is validated by the task's
    own model, so a field required there (translation's target_lang) may come from either."""
    return create_model(
        f"{task_model.__name__}Defaults", __base__=_Model, __doc__=task_model.__doc__, **optional_fields(task_model)
    )


# Tasks with a route of their own on the online endpoint: those that take any text. The
# chat task's texts are OpenAI requests, which the endpoint's OpenAI-compatible routes serve.
SERVED_TASKS = {name: cls for name, cls in TASKS.items() if cls.input_format is None}

ServeTasksConfig = create_model(
    "ServeTasksConfig",
    __base__=_Model,
    __doc__="The task routes to serve (POST /v1/<route>), each with server-side defaults for its "
    "parameters; a request's own parameters override them. Omitted: all tasks, no defaults.",
    **{
        name: (Optional[_defaults_model(cls.config_model)], Field(None, description=f"POST /v1/{cls.route}: {cls.description}"))
        for name, cls in SERVED_TASKS.items()
    },
)


def _all_task_routes():
    return ServeTasksConfig(**{name: {} for name in SERVED_TASKS})


class HTTPConfig(_Model):
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds; 0.0.0.0 to accept other machines.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    access_log: bool = Field(
        False, description="Ray Serve's per-request access log lines (off by default: they cost CPU on every request)."
    )
    stream_interval_ms: float = Field(
        50,
        ge=0,
        description="Streamed answers: after the first token (sent at once), pieces go out at most this often, "
        "several tokens per write (fewer messages through Serve's proxy; Ray Serve LLM does the same). 0: every token.",
    )
    stream_tokens: int = Field(
        1,
        ge=1,
        description="Streamed answers (OpenAI routes): the engine hands over new text every this many tokens "
        "(the first token at once): less work per token in the replica, chunkier streams.",
    )


class LimitsConfig(_Model):
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest request body; past it 413.")
    max_texts: int = Field(32, ge=1, description="Texts per request on the task routes (and prompts per /v1/completions request); past it 422.")
    max_chars: int = Field(
        20_000, ge=1, description="Characters per text (task routes) or per prompt (all messages of a chat); past it 422."
    )
    max_tokens: int = Field(
        512,
        ge=1,
        description="Most tokens one answer may generate. A request asking for more gets 422; a task's default above it is lowered to it.",
    )
    request_timeout_s: float = Field(
        60, gt=0, description="A request still generating after this long gets 504 and its generation is aborted in the engine."
    )


class AdmissionConfig(_Model):
    max_texts_in_flight: int = Field(
        256,
        ge=1,
        description="Per replica: texts (task routes) and prompts (OpenAI routes) in its engine at once. A request "
        "that would go past it is answered at once with reject_status and Retry-After, never queued.",
    )
    max_ongoing_requests: int = Field(
        512,
        ge=1,
        description="Ray Serve: HTTP requests inside one replica at once (health and model routes included); more wait at the proxy.",
    )
    max_queued_requests: int = Field(
        64,
        ge=1,
        description="Ray Serve: requests one proxy holds while every replica is at max_ongoing_requests (or none is up); "
        "past it reject_status with Retry-After at once.",
    )
    reject_status: Literal[503, 429] = Field(503, description="Status of a request turned away for load (503 or 429).")
    retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) sent with every 503/429 for load or an engine being replaced.")


class AuthConfig(_Model):
    api_keys_file: Optional[str] = Field(
        None, description="File of API keys, one per line ('#' comments). Clients send 'Authorization: Bearer <key>'."
    )
    api_keys_env: Optional[str] = Field(
        None, description="Name of an environment variable holding API keys (comma-separated)."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys_file or self.api_keys_env)


class AutoscalingConfig(_Model):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0 scales to zero when idle).")
    max_replicas: int = Field(ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(
        32, gt=0, description="Requests in flight per replica that Ray Serve's autoscaler aims for."
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class ServeResourcesConfig(_Model):
    replicas: int = Field(1, ge=1, description="Replicas (one vLLM engine each), when autoscaling is not set.")
    autoscaling: Optional[AutoscalingConfig] = Field(None, description="Replica bounds for Ray Serve's autoscaler; replaces `replicas`.")
    cpus_per_replica: float = Field(1, gt=0, description="Logical CPUs reserved per replica (its engine's threads on the CPU).")
    gpus_per_replica: Optional[float] = Field(
        None, ge=0, description="GPUs per replica; default tensor_parallel_size on CUDA, 0 on the CPU."
    )
    ray_address: Optional[str] = Field(
        None, description="Ray cluster to join ('auto', 'ray://host:10001'); default starts a local one in-process."
    )
    num_cpus: Optional[int] = Field(None, ge=1, description="Logical CPUs of the in-process local cluster.")


class HealthConfig(_Model):
    check_period_s: float = Field(5, gt=0, description="How often Ray Serve asks each replica whether its engine is healthy.")
    check_timeout_s: float = Field(30, gt=0, description="A health check unanswered this long fails.")
    stall_timeout_s: float = Field(
        60,
        gt=0,
        description="A replica whose engine has requests in flight but computes no token for this long is "
        "unhealthy, and Ray Serve replaces it (as it does when the engine process dies).",
    )
    drain_timeout_s: float = Field(
        30, ge=0, description="On shutdown or replacement, in-flight requests get this long to finish."
    )


class ServeConfig(_Model):
    """`pipeline serve`: a Ray Serve application answering the tasks online, plus
    OpenAI-compatible routes, on the same model and engine settings as a batch job."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    tasks: ServeTasksConfig = Field(default_factory=_all_task_routes)
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    resources: ServeResourcesConfig = Field(default_factory=ServeResourcesConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    name: str = Field("pipeline", min_length=1, description="Ray Serve application name.")

    @model_validator(mode="after")
    def _consistent(self) -> "ServeConfig":
        if self.limits.max_texts > self.admission.max_texts_in_flight:
            raise ValueError(
                f"limits.max_texts ({self.limits.max_texts}) is above admission.max_texts_in_flight "
                f"({self.admission.max_texts_in_flight}): such a request could never be admitted"
            )
        # Unset max_model_len: the model's own limit, known once the engine reads the model
        # (the replica then checks each request against it).
        if self.engine.max_model_len is not None and self.limits.max_tokens >= self.engine.max_model_len:
            raise ValueError(
                f"limits.max_tokens ({self.limits.max_tokens}) leaves no room for a prompt in "
                f"engine.max_model_len ({self.engine.max_model_len})"
            )
        return self

    def task_routes(self) -> dict[str, Any]:
        """Enabled task name -> its server-side defaults, in registry order."""
        return {n: getattr(self.tasks, n) for n in SERVED_TASKS if getattr(self.tasks, n) is not None}

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "ServeConfig":
        data = _load_yaml(path, "a serve spec")
        _resolve_relative_paths(data, Path(path).resolve().parent)
        return cls.model_validate(deep_merge(data, overrides or {}))
