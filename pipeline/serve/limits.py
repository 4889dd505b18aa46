"""Limits and admission: what keeps one replica answering quickly under any load.

- `BodySizeLimit` (ASGI middleware): a body over `limits.max_body_bytes` gets 413 before
  it is read whole (Content-Length checked first, then the bytes as they arrive).
- `Admission`: texts and prompts in this replica's engine at once. A request that would go
  past `admission.max_texts_in_flight` is answered at once with 503 (or 429) and
  Retry-After: nothing waits in a queue that grows with the load.

Why not Ray Serve's own bounds alone: `max_ongoing_requests` and `max_queued_requests`
count HTTP requests, not the work in them (one request may carry `limits.max_texts`
texts); a request over `max_ongoing_requests` first waits in the proxy's queue, and only
once that queue is full are others turned away (then with Retry-After, through the
`backpressure_config` they are given); and health and model routes would compete for the
same slots. So Serve's bounds stay as a backstop, sized above ours.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Optional

from starlette.exceptions import HTTPException

from pipeline.errors import ErrorKind

ASGIApp = Callable[..., Awaitable[None]]


class ApiError(HTTPException):
    """An answer other than 200, raised anywhere below a route; app.py renders it. An
    HTTPException, so that FastAPI passes it through unchanged even from inside body
    parsing (where it turns any other exception into a 400)."""

    def __init__(
        self,
        status: int,
        kind: ErrorKind,
        message: str,
        param: Optional[str] = None,
        retry_after: Optional[int] = None,
        headers: Optional[dict[str, str]] = None,
    ):
        hdrs = dict(headers or {})
        if retry_after is not None:
            hdrs["Retry-After"] = str(retry_after)
        # Messages may quote the request (a field name, a value): keep them encodable.
        message, param = _encodable(message), _encodable(param)
        super().__init__(status_code=status, detail=message, headers=hdrs)
        self.status, self.kind, self.message, self.param = status, kind, message, param

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"kind": self.kind.value, "message": self.message}
        if self.param is not None:
            err["param"] = self.param
        return {"error": err}


def _encodable(s: Optional[str]) -> Optional[str]:
    if s is None or s.isascii():
        return s
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


async def send_error(send, err: ApiError) -> None:
    """An ApiError straight onto an ASGI connection (for middlewares, below FastAPI)."""
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (err.headers or {}).items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """413 for a body over `max_bytes`, whether it declares its length or streams it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> ApiError:
        return ApiError(413, ErrorKind.PAYLOAD_TOO_LARGE, f"the request body is over {self.max_bytes} bytes (limits.max_body_bytes)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    return await send_error(send, ApiError(400, ErrorKind.INVALID_REQUEST, "bad Content-Length header"))
                if declared > self.max_bytes:
                    return await send_error(send, self._error())
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise self._error()
            return msg

        async def tracked_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except ApiError as e:  # raised by counted_receive where no handler caught it
            if not started:
                await send_error(send, e)


class Admission:
    """Counts texts admitted into this replica's engine; refuses past the bound at once.

    Runs on the replica's one event loop, so the counter needs no lock."""

    def __init__(self, max_in_flight: int, reject_status: int, retry_after_s: int):
        self.max_in_flight = max_in_flight
        self.reject_status = reject_status
        self.retry_after_s = retry_after_s
        self.admitted = 0
        self.rejected = 0

    def __call__(self, n: int) -> "_Admitted":
        if self.admitted + n > self.max_in_flight:
            self.rejected += 1
            raise ApiError(
                self.reject_status,
                ErrorKind.OVERLOADED,
                f"the server is at capacity ({self.admitted} of {self.max_in_flight} texts in flight on this replica); "
                f"retry after {self.retry_after_s}s",
                retry_after=self.retry_after_s,
            )
        self.admitted += n
        return _Admitted(self, n)


class _Admitted:
    def __init__(self, admission: Admission, n: int):
        self.admission, self.n = admission, n

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.n:
            self.admission.admitted -= self.n
            self.n = 0


def text_problem(text: str) -> Optional[tuple[ErrorKind, str]]:
    """Why a text cannot be run (the batch readers' kinds for the same problems), or None.
    Lone surrogates never get here: request validation refuses them (422)."""
    if not text or text.isspace():
        return ErrorKind.EMPTY_TEXT, "the text is empty" if not text else "the text holds only whitespace"
    if "\x00" in text:
        return ErrorKind.INVALID_TEXT, f"the text contains a NUL (\\x00) character at offset {text.index(chr(0))}"
    return None


def check_max_tokens(requested: Optional[int], cap: int, param: str = "max_tokens") -> None:
    if requested is not None and requested > cap:
        raise ApiError(
            422, ErrorKind.INVALID_REQUEST, f"{param} is {requested}; this server allows at most {cap} (limits.max_tokens)", param=param
        )
