"""OpenAI-compatible `POST /v1/chat/completions` and `POST /v1/completions`, streaming (SSE)
included, on the replica's engine: the official `openai` client works unchanged.

The HTTP schema (pipeline/serve/schemas.py) is the first gate: it states this server's
limits in the OpenAPI document and refuses what is not served with a 422 naming the field
(n > 1, tools, logprobs, response formats, unknown fields). What it admits goes through the
same parser as the batch path's request lines (pipeline/tasks/openai_request.py: vLLM's own
request models and `to_sampling_params`), so a body means the same online and in a batch.
Chat messages are rendered through the model's chat template by the same helper as the
tasks' prompts (`pipeline.tasks.prompting.render_chat`). The same limits, admission,
deadline and abort-on-disconnect apply as on the task routes. Served: one choice per
prompt (`n=1`), sampling (temperature, top_p, seed, stop, penalties), usage counts.
"""

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from pipeline.errors import ErrorKind
from pipeline.serve.limits import ApiError, check_max_tokens
from pipeline.serve.routes import ERROR_RESPONSES, TIMEOUT_HEADER
from pipeline.serve.schemas import ChatCompletion, Completion, _OpenAIBody, openai_request_models
from pipeline.serve.service import ENGINE_POLL_S, Service
from pipeline.tasks.base import TaskInputError
from pipeline.tasks.openai_request import CHAT_URL, COMPLETIONS_URL, OpenAIRequest, completion_prompt_ids, parse_request
from pipeline.tasks.prompting import encode_prompt, render_chat

logger = logging.getLogger(__name__)

_STREAM_DOC = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "With stream=true: server-sent events, then 'data: [DONE]'."}}


def _parse(url: str, body: _OpenAIBody) -> OpenAIRequest:
    """The body the HTTP schema admitted, as the batch path reads a request line."""
    try:
        return parse_request(url, body.model_dump(exclude_unset=True), streaming=True)
    except TaskInputError as e:
        raise ApiError(422, e.kind, str(e)) from None


def _check_model(service: Service, model: Optional[str]) -> None:
    if model != service.model_name:
        raise ApiError(404, ErrorKind.NOT_FOUND, f"model {model!r} is not served here; GET /v1/models lists {service.model_name!r}", param="model")


def _sampling(service: Service, req: OpenAIRequest, prompt_len: int):
    """vLLM SamplingParams for one request, within the server's cap and the context."""
    limits, max_len = service.cfg.limits, service.cfg.engine.max_model_len
    requested = req.max_tokens
    check_max_tokens(requested, limits.max_tokens)
    room = max_len - prompt_len
    if room < 1 or (requested is not None and requested > room):
        raise ApiError(
            400,
            ErrorKind.TOO_LONG,
            f"this model's context is {max_len} tokens; the prompt has {prompt_len}"
            + (f" and {requested} more were asked for" if requested is not None else ", leaving no room for an answer"),
            param="messages" if req.url == CHAT_URL else "prompt",
        )
    stream_tokens = service.cfg.http.stream_tokens
    try:
        return req.sampling_params(
            requested if requested is not None else min(limits.max_tokens, room),
            stream_interval=stream_tokens if stream_tokens > 1 else None,
        )
    except TaskInputError as e:  # vLLM's own checks (min_tokens above max_tokens, ...)
        raise ApiError(422, e.kind, f"sampling parameters: {e}") from None


def _encode(service: Service, req: OpenAIRequest, prompt: str, param: str) -> list[int]:
    if len(prompt) > service.cfg.limits.max_chars:
        raise ApiError(
            422, ErrorKind.INVALID_REQUEST, f"{param} has {len(prompt)} characters; at most {service.cfg.limits.max_chars} (limits.max_chars)", param=param
        )
    ids = completion_prompt_ids(prompt, req.add_special_tokens, service.engine.tokenizer)
    if not ids:
        raise ApiError(400, ErrorKind.INVALID_REQUEST, f"{param} is empty: nothing to complete", param=param)
    return ids


def _chat_prompt(service: Service, req: OpenAIRequest) -> list[int]:
    total = sum(len(m["content"]) for m in req.messages)
    if total > service.cfg.limits.max_chars:
        raise ApiError(
            422, ErrorKind.INVALID_REQUEST, f"the messages have {total} characters; at most {service.cfg.limits.max_chars} (limits.max_chars)", param="messages"
        )
    try:
        prompt = render_chat(req.messages, service.engine.tokenizer)
    except Exception as e:  # noqa: BLE001 - a chat template that refuses these messages (roles, order)
        raise ApiError(400, ErrorKind.INVALID_REQUEST, f"the model's chat template refused the messages: {e}", param="messages") from None
    return encode_prompt(prompt, service.engine.tokenizer)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def server_timing(**seconds: float) -> dict[str, str]:
    """A Server-Timing header (standard; browsers' and clients' tools show it): where this
    replica spent a request's time, so that a client can tell it from the time in transit."""
    return {"Server-Timing": ", ".join(f"{k.replace('_', '-')};dur={v * 1000:.2f}" for k, v in seconds.items())}


async def _open_stream(service: Service, ids: list[int], params, frame, timeout: Optional[float], t0: float) -> StreamingResponse:
    """Admit the request and wait for its first chunk before answering 200, so that load,
    an engine being replaced or a deadline passed before any token still get their own
    status codes; then stream the rest."""
    service.ensure_ready()
    t_prep = time.perf_counter()
    stream = _Stream(service, service.engine.astream(ids, params), service.admission(1), service.deadline(timeout))
    frames = stream.frames(frame, len(ids))
    first = await frames.__anext__()  # raises (and cleans up) when the stream fails before its first token
    timing = server_timing(prep=t_prep - t0, first_token=time.perf_counter() - t_prep)

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for b in frames:
            yield b

    # `frames` has started: if the client leaves before `body` runs, closing `frames`
    # (directly or when it is collected) still releases admission and aborts the request.
    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **timing})


_END = object()


class _Stream:
    """One streamed request: a task reads the engine's chunks into a queue; a timer checks
    the deadline and the engine's life every ENGINE_POLL_S and, when either fails, cancels
    that task (aborting the request in the engine) and queues the error. The reader takes
    chunks from the queue with no per-chunk timer (measured: a wait with a timeout per
    chunk costs about 30 us, a plain queue get under 1 us)."""

    def __init__(self, service: Service, chunks, admitted, deadline: float):
        self.service, self.chunks, self.admitted = service, chunks, admitted
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deadline = deadline
        self.producer = asyncio.ensure_future(self._produce())
        self.loop = asyncio.get_running_loop()
        self.timer = self.loop.call_later(min(ENGINE_POLL_S, max(0.0, deadline - time.monotonic())), self._check)

    async def _produce(self) -> None:
        try:
            async for chunk in self.chunks:  # cancelling this task aborts the request in the engine
                self.queue.put_nowait(chunk)
            self.queue.put_nowait(_END)
        except Exception as e:  # noqa: BLE001 - handed to the reader
            self.queue.put_nowait(e)

    def _check(self) -> None:
        err = None
        if time.monotonic() >= self.deadline:
            err = self.service.timeout_error()
        elif self.service.engine.is_dead():
            err = self.service.unavailable("the vLLM engine process died")
        if err is None:
            self.timer = self.loop.call_later(ENGINE_POLL_S, self._check)
            return
        self._abort()
        self.queue.put_nowait(err)

    def _abort(self) -> None:
        if not self.producer.done() and not self.producer.cancelling():
            self.producer.cancel()  # aborts the request in the engine
            self.service.aborted += 1

    def close(self) -> None:
        self.timer.cancel()
        self._abort()
        self.admitted.release()

    def _failure(self, item: BaseException) -> ApiError:
        if isinstance(item, ApiError):
            return item
        try:
            return self.service.engine_failure(item)
        except Exception:  # noqa: BLE001 - not the engine's: a bug, logged, told as such
            logger.exception("streamed request failed")
            return ApiError(500, ErrorKind.INTERNAL_ERROR, f"{type(item).__name__}: {item}")

    async def frames(self, frame, prompt_tokens: int) -> AsyncIterator[bytes]:
        """SSE frames. Until the first one, a failure (deadline, dead engine) is raised, for
        the route to answer with its status; after it, the 200 is sent and a failure becomes
        an error event that ends the stream. After the first token, frames go out at most
        every http.stream_interval_ms (and at the end), several per write: fewer messages
        through Serve's proxy for the same text (Ray Serve LLM batches its streams too)."""
        interval = self.service.cfg.http.stream_interval_ms / 1000
        produced, finish, first = 0, None, True
        pending: list[bytes] = []
        last_flush = 0.0
        # Until some text has gone out, every frame goes at once: the engine's first chunks
        # can be empty (a token that is part of a character), and the first token's time is
        # what a client waits on.
        text_sent = pending_text = False
        try:
            while finish is None:
                item = await self.queue.get()
                items = [item]
                while not self.queue.empty():
                    items.append(self.queue.get_nowait())
                for item in items:
                    if item is _END:
                        finish = finish or "stop"
                        break
                    if isinstance(item, BaseException):
                        err = self._failure(item)
                        if first:
                            raise err
                        pending.append(_sse(err.body()))
                        yield b"".join(pending)
                        return
                    produced += len(item.token_ids)
                    if item.text or first:
                        pending.append(_sse(frame(item.text, None, first)))
                        pending_text = pending_text or bool(item.text)
                    first = False
                    if item.finish_reason is not None:
                        finish = item.finish_reason
                        break
                now = time.monotonic()
                if pending and (finish is not None or not text_sent or now - last_flush >= interval):
                    yield b"".join(pending)
                    pending, last_flush = [], now
                    text_sent, pending_text = text_sent or pending_text, False
            tail = [_sse(frame("", finish, False))]
            usage = frame.usage(prompt_tokens, produced)
            if usage is not None:
                tail.append(_sse(usage))
            tail.append(b"data: [DONE]\n\n")
            yield b"".join(pending + tail)
        finally:
            self.close()


class _Frames:
    """Builds the chunk objects of one stream (chat or completion)."""

    def __init__(self, kind: str, model: str, include_usage: bool):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def __call__(self, text: str, finish: Optional[str], first: bool) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def usage(self, prompt: int, completion: int) -> Optional[dict[str, Any]]:
        if not self.include_usage:
            return None
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [], "usage": _usage(prompt, completion)}


def openai_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["openai"])
    limits = service.cfg.limits
    ChatRequest, CompletionsRequest = openai_request_models(limits.max_tokens, limits.max_chars, limits.max_texts)
    responses = {**ERROR_RESPONSES, 400: ERROR_RESPONSES[422] | {"description": "The prompt does not fit the context (kind too_long), or the chat template refused the messages."}, **_STREAM_DOC}

    @router.post("/v1/chat/completions", response_model=ChatCompletion, responses=responses)
    async def chat_completions(body: ChatRequest, response: Response, timeout: Optional[float] = TIMEOUT_HEADER):
        t0 = time.perf_counter()
        req = _parse(CHAT_URL, body)
        _check_model(service, req.model)
        ids = _chat_prompt(service, req)
        params = _sampling(service, req, len(ids))
        if req.stream:
            return await _open_stream(service, ids, params, _Frames("chat", service.model_name, req.include_usage), timeout, t0)
        t_prep = time.perf_counter()
        gen = await service.run(1, service.engine.agenerate(ids, params), timeout)
        response.headers.update(server_timing(prep=t_prep - t0, generate=time.perf_counter() - t_prep))
        c = gen.completion
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": service.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}],
            "usage": _usage(gen.prompt_tokens, len(c.token_ids)),
        }

    @router.post("/v1/completions", response_model=Completion, responses=responses)
    async def completions(body: CompletionsRequest, response: Response, timeout: Optional[float] = TIMEOUT_HEADER):
        t0 = time.perf_counter()
        req = _parse(COMPLETIONS_URL, body)
        _check_model(service, req.model)
        prompts = req.prompts
        limits = service.cfg.limits
        if not prompts or len(prompts) > limits.max_texts:
            raise ApiError(422, ErrorKind.INVALID_REQUEST, f"prompt: give 1 to {limits.max_texts} prompts (limits.max_texts)", param="prompt")
        if req.stream and len(prompts) > 1:
            raise ApiError(422, ErrorKind.INVALID_REQUEST, "stream: one prompt per streamed request", param="stream")
        ids = [_encode(service, req, p, "prompt" if len(prompts) == 1 else f"prompt.{i}") for i, p in enumerate(prompts)]
        params = [_sampling(service, req, len(x)) for x in ids]
        if req.stream:
            return await _open_stream(service, ids[0], params[0], _Frames("completion", service.model_name, req.include_usage), timeout, t0)

        async def all_prompts():
            jobs = [asyncio.ensure_future(service.engine.agenerate(x, p)) for x, p in zip(ids, params)]
            try:
                return await asyncio.gather(*jobs)
            except Exception:
                for j in jobs:
                    j.cancel()
                raise

        t_prep = time.perf_counter()
        gens = await service.run(len(ids), all_prompts(), timeout)
        response.headers.update(server_timing(prep=t_prep - t0, generate=time.perf_counter() - t_prep))
        return {
            "id": "cmpl-" + uuid.uuid4().hex,
            "object": "text_completion",
            "created": int(time.time()),
            "model": service.model_name,
            "choices": [
                {"index": i, "text": g.completion.text, "finish_reason": g.completion.finish_reason} for i, g in enumerate(gens)
            ],
            "usage": _usage(sum(g.prompt_tokens for g in gens), sum(len(g.completion.token_ids) for g in gens)),
        }

    return router
