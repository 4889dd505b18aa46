"""One replica's state, shared by its routes: the engine, the tasks with their server
defaults, admission, the request deadline, and how engine trouble becomes an answer.

Built by the Serve deployment (pipeline/serve/deployment.py) around a started `Engine`;
tests build it around a fake engine to exercise routes, limits and auth without vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Awaitable, Optional, TypeVar

from pydantic import ValidationError

from pipeline.config import ServeConfig
from pipeline.errors import ErrorKind
from pipeline.serve.health import EngineHealth
from pipeline.serve.limits import Admission, ApiError, check_max_tokens
from pipeline.tasks.base import Task
from pipeline.tasks.execute import ExecContext
from pipeline.tasks.registry import TASKS

logger = logging.getLogger(__name__)
T = TypeVar("T")

# How often a request waiting on the engine checks that the engine still lives.
ENGINE_POLL_S = 0.5


class Service:
    def __init__(self, cfg: ServeConfig, engine: Any, model_name: str, api_key_digests: tuple[bytes, ...] = ()):
        if cfg.engine.max_model_len is None and getattr(engine, "max_model_len", None):
            # Unset: the engine took the model's own limit (engine/limits.py); the routes,
            # the model card and the length checks read it from here.
            cfg = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"max_model_len": engine.max_model_len})})
        self.cfg = cfg
        self.engine = engine
        self.model_name = model_name
        self.api_key_digests = api_key_digests
        self.created = int(time.time())
        self.ctx = ExecContext.for_engine(engine.tokenizer, cfg.engine)
        a = cfg.admission
        self.admission = Admission(a.max_texts_in_flight, a.reject_status, a.retry_after_s)
        self.health = EngineHealth(engine, cfg.health.stall_timeout_s)
        self.routes = cfg.task_routes()  # task name -> server defaults
        self.aborted = 0  # requests whose generation was aborted: deadline, dead engine, or the client left
        # Task objects per distinct effective config: a task builds its sampling params once,
        # and vLLM caches structured-output grammars per params, so reuse them.
        self._tasks: OrderedDict[str, Task] = OrderedDict()

    # -- tasks ------------------------------------------------------------------------------
    def task(self, name: str, params: dict[str, Any], sampling: Optional[dict[str, Any]]) -> Task:
        """The task for one request: server defaults, then the request's parameters, validated
        by the task's own config model; max_tokens capped (a request over the cap is a 422)."""
        cls = TASKS[name]
        defaults = self.routes[name].model_dump(exclude_none=True)
        merged = {**defaults, **{k: v for k, v in params.items() if v is not None}}
        if sampling:
            merged["sampling"] = {**defaults.get("sampling", {}), **sampling}
        key = repr((name, sorted(merged.items())))  # the name first: two tasks may share parameters
        task = self._tasks.get(key)
        if task is not None:
            self._tasks.move_to_end(key)
            return task
        try:
            cfg = cls.config_model.model_validate(merged)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ApiError(422, ErrorKind.INVALID_REQUEST, f"{loc}: {err['msg']}", param=loc) from None
        cap = self.cfg.limits.max_tokens
        if sampling and sampling.get("max_tokens") is not None:
            check_max_tokens(sampling["max_tokens"], cap, "sampling.max_tokens")
        task = cls(cfg)
        if task.max_output_tokens() > cap:
            # A default (the task's or the server's) above the cap: lowered to it.
            task = cls(cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"max_tokens": cap})}))
        from vllm.exceptions import VLLMClientError

        try:
            task.sampling_params()  # built now: vLLM's own checks (min_tokens above max_tokens, ...) are a 422
        except (ValueError, VLLMClientError) as e:
            raise ApiError(422, ErrorKind.INVALID_REQUEST, f"sampling: {e}", param="sampling") from None
        self._tasks[key] = task
        if len(self._tasks) > 256:
            self._tasks.popitem(last=False)
        return task

    # -- running requests -------------------------------------------------------------------
    def ensure_ready(self) -> None:
        """503 at once when this replica's engine cannot serve (it is being replaced)."""
        why = self.health.quick_problem()
        if why is not None:
            raise self.unavailable(why)

    def unavailable(self, why: str) -> ApiError:
        return ApiError(
            503,
            ErrorKind.UNAVAILABLE,
            f"{why}; this replica is being replaced: retry after {self.cfg.admission.retry_after_s}s",
            retry_after=self.cfg.admission.retry_after_s,
        )

    def engine_failure(self, e: Exception) -> ApiError:
        """An exception from the engine as an answer: vLLM refusing the request (an empty
        prompt, ...) is a 400; a dead or failing engine a 503 (retry: the replica is replaced)."""
        from vllm.exceptions import VLLMClientError

        from pipeline.engine.engine import EngineError

        if isinstance(e, VLLMClientError):
            return ApiError(400, ErrorKind.INVALID_REQUEST, f"the engine refused the request: {e}")
        if isinstance(e, EngineError):
            return self.unavailable(f"the engine failed ({e})")
        raise e

    def timeout_error(self) -> ApiError:
        t = self.cfg.limits.request_timeout_s
        return ApiError(
            504,
            ErrorKind.TIMEOUT,
            f"the request ran past its deadline (limits.request_timeout_s={t:g}s, or the client's X-Request-Timeout); "
            "its generation was aborted",
        )

    async def run(self, n: int, work: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Admit n texts, then await `work` until it is done, the request's deadline passes
        (504) or the engine dies (503). Either way out, the work is cancelled, which aborts
        its requests in the engine; so does a client that disconnects (Serve cancels this
        coroutine then)."""
        started = False
        try:
            self.ensure_ready()
            async with self.admission(n):
                started = True
                return await self.until_done(asyncio.ensure_future(work), self.deadline(timeout))
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - classified: the request's fault, or the engine's
            raise self.engine_failure(e) from None
        finally:
            if not started and asyncio.iscoroutine(work):
                work.close()  # refused before it ran: no 'never awaited' warning

    def deadline(self, timeout: Optional[float] = None) -> float:
        """When a request started now must be done: limits.request_timeout_s, or sooner if its
        client asked (the X-Request-Timeout header)."""
        limit = self.cfg.limits.request_timeout_s
        return time.monotonic() + (min(timeout, limit) if timeout is not None else limit)

    async def until_done(self, task: "asyncio.Future[T]", deadline: float) -> T:
        """The task's result, waited for until `deadline`. The engine is checked meanwhile:
        when its process dies, requests waiting on it are not always woken (see
        `Engine.is_dead`), so a dead engine ends the wait here (503) instead of the deadline
        (504) or never. The task is cancelled on every way out but its own end."""
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.timeout_error()
                done, _ = await asyncio.wait({task}, timeout=min(remaining, ENGINE_POLL_S))
                if done:
                    return task.result()
                if self.engine.is_dead():
                    raise self.unavailable("the vLLM engine process died")
        finally:
            if not task.done():
                task.cancel()
                self.aborted += 1

    def engine_state(self) -> dict[str, Any]:
        m = self.engine.metrics()
        return {
            "in_flight": self.engine.in_flight,
            "admitted": self.admission.admitted,
            "running": m.get("num_requests_running"),
            "waiting": m.get("num_requests_waiting"),
            "finished": self.engine.finished_requests,
            "aborted": self.aborted,
        }
