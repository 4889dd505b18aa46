"""A connection to a cluster's Jobs API (`ray.job_submission.JobSubmissionClient`): which
address, which token, and one clear line when either is wrong.

Address: `--address`, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, as Ray's own `ray job`
CLI does. (Ray's client lets those variables override even an address passed to it; here
an explicit `--address` wins.)

Token: since Ray 2.52 a cluster may require a bearer token on every request
(RAY_AUTH_MODE=token; clusters started by `ray.init()` do by default). Ray's client sends
one only if this process itself runs with RAY_AUTH_MODE=token. Here the cluster is asked
(`/api/authentication_mode` is public) and, if it wants a token, it is taken from where
Ray looks: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.
A cluster that needs no token is never sent one.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline.errors import ExitStatus, PipelineError, UsageError

logger = logging.getLogger(__name__)

ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


class ClusterError(PipelineError):
    """The cluster could not be reached or refused us; nothing was changed on it."""


class JobNotFound(PipelineError):
    exit_status = ExitStatus.USAGE


def default_address() -> Optional[str]:
    for var in ADDRESS_ENV:
        if os.environ.get(var):
            return os.environ[var]
    return None


def find_token() -> Optional[str]:
    """The token as Ray would find it (same sources, same order)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as e:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read the token ({e.strerror})") from None
        if not token:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
        return token
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def _auth_headers(url: str) -> dict[str, str]:
    import requests

    try:
        r = requests.get(f"{url}/api/authentication_mode", timeout=10)
    except requests.RequestException as e:
        raise ClusterError(f"cannot reach the Ray dashboard at {url}: {_reason(e)}") from None
    mode = r.json().get("authentication_mode") if r.ok else None  # older Ray: no such route, no auth
    if mode != "token":
        return {}
    token = find_token()
    if not token:
        raise UsageError(
            f"the cluster at {url} requires a token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file "
            "holding it); `ray get-auth-token` on the head node prints it"
        )
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def _without_address_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in ADDRESS_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: Optional[str]) -> Any:
    """A JobSubmissionClient for the cluster at `address` (or the environment's)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    explicit = address is not None
    address = address or default_address()
    if not address:
        raise UsageError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    address = address.rstrip("/")
    headers = _auth_headers(address) if address.startswith(("http://", "https://")) else {}
    try:
        with _without_address_env() if explicit else contextlib.nullcontext():
            return JobSubmissionClient(address, headers=headers or None)
    except AuthenticationError as e:
        first = str(e).strip().splitlines()[0]
        raise UsageError(f"the cluster at {address} refused our token: {first}") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot reach the Jobs API at {address}: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[-1][:300] if text else type(e).__name__
