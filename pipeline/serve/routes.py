"""The task routes (`POST /v1/<task route>`, derived from the task registry), `GET /v1/models`
and the health routes.

A task request runs each of its texts through `execute` (pipeline/tasks/execute.py), the
very function the batch actor calls, so an online result has the same fields and values
as the batch row for the same text: `TaskResult.columns` plus `model`.
"""

import asyncio
import inspect
import time
from typing import Any, Optional

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from pipeline.serve.limits import text_problem
from pipeline.serve.schemas import (
    ErrorResponse,
    Liveness,
    ModelCard,
    ModelList,
    Readiness,
    task_param_names,
    task_request_model,
    task_response_model,
)
from pipeline.serve.service import Service
from pipeline.tasks.base import Task
from pipeline.tasks.execute import execute
from pipeline.tasks.registry import TASKS

# A client may ask for a deadline sooner than the server's (never later).
TIMEOUT_HEADER = Header(
    None,
    alias="X-Request-Timeout",
    ge=1,
    description="Seconds this request may take: at least 1, at most limits.request_timeout_s (a longer one is "
    "shortened to it). Past it 504, its generation aborted.",
)

LIVENESS_PATH = "/health/live"
READINESS_PATH = "/health/ready"


def _err(desc: str, retry: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"model": ErrorResponse, "description": desc}
    if retry:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
    return out


# The answers every generating route may give besides 200 (the OpenAPI document lists them).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _err("Missing or wrong API key (when the server has keys)."),
    404: _err("No such model."),
    413: _err("The body is over limits.max_body_bytes."),
    422: _err("Invalid body or parameters, or a limit passed (texts, characters, max_tokens)."),
    429: _err("Turned away for load (when admission.reject_status is 429).", retry=True),
    503: _err("Turned away for load, or the replica's engine is being replaced.", retry=True),
    504: _err("Past limits.request_timeout_s; the generation was aborted."),
}


async def run_texts(service: Service, task: Task, texts: list[str]) -> list[dict[str, Any]]:
    """Every text of a request through `execute`, concurrently (continuous batching in the
    engine); per text, its columns or its error."""

    async def one(text: str) -> dict[str, Any]:
        bad = text_problem(text)
        if bad is not None:
            return {"error": {"kind": bad[0].value, "message": bad[1]}}
        r = await execute(task, text, service.engine, service.ctx)
        if r.ok:
            return {**r.columns, "model": service.model_name}
        return {"error": {"kind": r.error_kind.value, "message": r.error_message}}

    jobs = [asyncio.ensure_future(one(t)) for t in texts]
    try:
        return list(await asyncio.gather(*jobs))
    except Exception:
        # A dead engine fails one text: stop the others too (gather leaves them running).
        for j in jobs:
            j.cancel()
        raise


def _task_endpoint(service: Service, name: str):
    cls = TASKS[name]
    limits = service.cfg.limits
    defaults = frozenset(service.routes[name].model_dump(exclude_none=True))
    request_model = task_request_model(cls, limits.max_texts, limits.max_chars, limits.max_tokens, defaults)
    params = task_param_names(cls)

    async def endpoint(body, response: Response, timeout: Optional[float] = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        texts = [body.text] if body.text is not None else list(body.texts)
        sampling = body.sampling.as_kwargs() if body.sampling is not None else None
        task = service.task(name, {p: getattr(body, p) for p in params}, sampling)
        results = await service.run(len(texts), run_texts(service, task, texts), timeout)
        response.headers["Server-Timing"] = f"run;dur={(time.perf_counter() - t0) * 1000:.2f}"
        return {"results": results}

    # The body's model is built at run time (from the registry and the limits), so the
    # signature FastAPI reads is given explicitly.
    endpoint.__signature__ = inspect.Signature(
        [
            inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=request_model),
            inspect.Parameter("response", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Response),
            inspect.Parameter("timeout", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=TIMEOUT_HEADER, annotation=Optional[float]),
        ]
    )
    endpoint.__name__ = f"{name}_endpoint"
    return endpoint


def task_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["tasks"])
    for name in service.routes:
        cls = TASKS[name]
        router.add_api_route(
            f"/v1/{cls.route}",
            _task_endpoint(service, name),
            methods=["POST"],
            response_model=task_response_model(cls),
            responses=ERROR_RESPONSES,
            summary=f"{cls.name}: {cls.description}",
            description=f"Runs the `{cls.name}` task on one text or several. Each result has the columns of the "
            f"batch `{cls.name}` dataset (plus `model`), or a per-text error with its kind.",
        )
    return router


def info_router(service: Service) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", response_model=ModelList, tags=["models"], responses={401: ERROR_RESPONSES[401]})
    async def models() -> dict[str, Any]:
        card = ModelCard(id=service.model_name, created=service.created, max_model_len=service.cfg.engine.max_model_len)
        return {"object": "list", "data": [card]}

    @router.get(LIVENESS_PATH, response_model=Liveness, tags=["health"], summary="Liveness: the replica answers (no auth).")
    async def live() -> dict[str, Any]:
        return {"status": "alive"}

    @router.get(
        READINESS_PATH,
        response_model=Readiness,
        tags=["health"],
        summary="Readiness: the engine is up and making progress.",
        responses={401: ERROR_RESPONSES[401], 503: _err("The engine is dead or stuck; the replica is being replaced.", retry=True)},
    )
    async def ready():
        why = service.health.problem()
        if why is not None:
            err = service.unavailable(why)
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        return {"status": "ready", "model": service.model_name, "engine": service.engine_state()}

    return router
