"""The FastAPI application of one replica, put together from the routes, limits and auth.

    create_app(service) -> FastAPI

Every answer other than 200 has one shape, `{"error": {"kind", "message", "param"?}}`
(`kind` from `pipeline.errors.ErrorKind`), validation errors included; an unexpected
exception is a 500 of kind `internal_error` with its traceback in the replica's log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import ErrorKind
from pipeline.serve.auth import BearerAuth
from pipeline.serve.limits import ApiError, BodySizeLimit
from pipeline.serve.openai_compat import openai_router
from pipeline.serve.routes import LIVENESS_PATH, info_router, task_router
from pipeline.serve.service import Service

logger = logging.getLogger(__name__)

DESCRIPTION = """\
The pipeline's tasks online (`POST /v1/sentiment`, `/v1/summarize`, `/v1/translate`: the same
prompts, model, parsing and result fields as a batch run), plus OpenAI-compatible
`/v1/chat/completions` and `/v1/completions` on the same engine.

Every answer other than 200 is `{"error": {"kind": ..., "message": ...}}`. Load beyond the
server's bounds is turned away at once with 503 (or 429) and `Retry-After`; a request past
its deadline gets 504 and its generation is aborted. With API keys configured, every route
but `GET /health/live` needs `Authorization: Bearer <key>`.
"""


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, first_loc = [], None
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        first_loc = first_loc or loc
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", first_loc


def create_app(service: Service) -> FastAPI:
    from pipeline import __version__

    app = FastAPI(title="pipeline", version=__version__, description=DESCRIPTION, redoc_url=None)
    app.include_router(task_router(service))
    app.include_router(openai_router(service))
    app.include_router(info_router(service))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, loc = _validation_message(exc)
        return JSONResponse(ApiError(422, ErrorKind.INVALID_REQUEST, message, param=loc).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = ErrorKind.NOT_FOUND if exc.status_code in (404, 405) else ErrorKind.INVALID_REQUEST
        if exc.status_code >= 500:
            kind = ErrorKind.INTERNAL_ERROR
        return JSONResponse(ApiError(exc.status_code, kind, str(exc.detail)).body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering a request")
        return JSONResponse(ApiError(500, ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}").body(), status_code=500)

    # Outermost first on the way in: auth (no body is read for a caller without a key),
    # then the body limit.
    app.add_middleware(BodySizeLimit, max_bytes=service.cfg.limits.max_body_bytes)
    app.add_middleware(BearerAuth, digests=service.api_key_digests, open_paths=[LIVENESS_PATH])
    _document_errors(app, service.model_name)
    return app


def _document_errors(app: FastAPI, model_name: str) -> None:
    """FastAPI documents its own 422 body (`HTTPValidationError`); ours is ErrorResponse."""
    original = app.openapi

    def openapi():
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        for path in schema.get("paths", {}).values():
            for op in path.values():
                r422 = op.get("responses", {}).get("422")
                if r422 and "HTTPValidationError" in str(r422):
                    r422["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        comps = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            comps.pop(name, None)
        # One model is served: say which (another name is a 404, as on vLLM's server).
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            model = comps.get(name, {}).get("properties", {}).get("model")
            if model is not None:
                model["enum"] = [model_name]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
