"""Optional API-key authentication: `Authorization: Bearer <key>` on every route but liveness.

Keys come from a file (one per line, '#' comments) and/or an environment variable
(comma-separated), read where the replica runs. Only their SHA-256 digests are kept, and
a presented key is compared with every one of them with `hmac.compare_digest`, so
neither the content nor the length of a key leaks through timing. Keys are never logged,
and never pass through Ray (the deployment is given where to read them, not them).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Iterable

from pipeline.config import AuthConfig
from pipeline.errors import ErrorKind, UsageError
from pipeline.serve.limits import ApiError, ASGIApp, send_error


def load_keys(cfg: AuthConfig) -> tuple[bytes, ...]:
    """SHA-256 digests of the configured keys; () when auth is off. Raises UsageError when a
    configured source is missing or holds no key (a server meant to be closed never opens)."""
    keys: list[str] = []
    if cfg.api_keys_file:
        try:
            with open(cfg.api_keys_file, encoding="utf-8") as f:
                found = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise UsageError(f"auth.api_keys_file: cannot read {cfg.api_keys_file}: {e.strerror}") from None
        if not found:
            raise UsageError(f"auth.api_keys_file: {cfg.api_keys_file} holds no key")
        keys += found
    if cfg.api_keys_env:
        raw = os.environ.get(cfg.api_keys_env)
        found = [k.strip() for k in (raw or "").split(",") if k.strip()]
        if not found:
            raise UsageError(f"auth.api_keys_env: the environment variable {cfg.api_keys_env} is unset or holds no key")
        keys += found
    return tuple(_digest(k) for k in keys)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def key_matches(presented: str, digests: Iterable[bytes]) -> bool:
    d = _digest(presented)
    ok = False
    for k in digests:  # no early exit: the time taken does not say which key matched
        ok |= hmac.compare_digest(d, k)
    return ok


class BearerAuth:
    """ASGI middleware: 401 unless the request carries one of the keys (paths in `open_paths` excepted)."""

    def __init__(self, app: ASGIApp, digests: tuple[bytes, ...], open_paths: Iterable[str]):
        self.app, self.digests, self.open_paths = app, digests, frozenset(open_paths)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.digests or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        presented = None
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                scheme, _, token = v.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    presented = token.strip()
                break
        if presented is not None and key_matches(presented, self.digests):
            return await self.app(scope, receive, send)
        why = "a valid API key is required" if presented is not None else "missing 'Authorization: Bearer <API key>' header"
        await send_error(send, ApiError(401, ErrorKind.UNAUTHORIZED, why, headers={"WWW-Authenticate": "Bearer"}))
