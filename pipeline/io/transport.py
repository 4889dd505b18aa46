"""Opening the raw (still compressed) bytes of an input file, with timeouts, bounded
retries and resume.

    local paths   the file itself; no retries (a missing or unreadable local file does not
                  heal by waiting)
    http(s)://    smart_open's HTTP reader (requests), connect and read timeouts
    s3://         boto3 `get_object`, connect and read timeouts (botocore's own retries
                  off: this module retries, so that `read_retries` means one thing)
    gs://         smart_open's GCS reader (the client library's timeouts)

Without a read timeout a server that stops sending in the middle of a body blocks its read
task for good (smart_open's HTTP reader has none by default). Remote streams are therefore
`RetryingReader`s: a failed open or read that retrying can fix (a timeout, a dropped
connection, a body cut short, HTTP 5xx/408/429, S3 throttling) is retried after an
exponential backoff with jitter, resuming at the byte offset already delivered: with a
Range request where the server honours it, else by reading the file again from its start
and skipping what was delivered. Every resumed request carries the first response's
validator (If-Match with its ETag, else If-Unmodified-Since), so a file that changes
between two attempts fails with "changed" instead of splicing two versions. Errors that
retrying cannot fix (404, 403, a changed file) fail at once. The retry count restarts
whenever bytes arrive, so a long file on a flaky link is not failed for blips spread over
hours, while a server stuck at one offset fails after `read_retries` retries: at most
(read_retries + 1) x (connect + read timeout) plus the backoffs.

`InputConfig` carries the settings (`connect_timeout_s`, `read_timeout_s`, `read_retries`,
`retry_backoff_s`, `retry_backoff_max_s`); listing (sources.py) uses the same `RetryPolicy`.
"""

from __future__ import annotations

import io
import logging
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from pipeline.config import InputConfig
from pipeline.io.compression import READ_BUFFER

__all__ = ["RetryPolicy", "ReadFailed", "FileChanged", "RetryingReader", "open_raw", "random_access_view", "spool", "retriable"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# HTTP statuses worth another try; other 4xx (404, 403, 412...) will not change by waiting.
_RETRY_STATUS = frozenset({408, 425, 429})
_S3_RETRY_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
     "InternalError", "ServiceUnavailable", "RequestLimitExceeded"}
)


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts and retries of remote reads and listings (from `InputConfig`)."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    @classmethod
    def of(cls, cfg: InputConfig) -> "RetryPolicy":
        return cls(cfg.connect_timeout_s, cfg.read_timeout_s, cfg.read_retries, cfg.retry_backoff_s, cfg.retry_backoff_max_s)

    def delay(self, failures: int) -> float:
        """Seconds before retry number `failures` (1-based): doubling, capped, with jitter so
        that many read tasks failing together (one server restarting) do not retry in step."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)

    def botocore_config(self, retries: bool) -> Any:
        """A botocore Config with these timeouts; `retries`: botocore's standard retry mode with
        this many retries (listing), else none (reads retry here, resuming the stream)."""
        from botocore.config import Config

        attempts = self.retries + 1 if retries else 1
        return Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            tcp_keepalive=True,
        )

    def call(self, fn: Callable[[], T], what: str) -> T:
        """fn(), retried on errors `retriable` says are worth it (for whole calls such as a HEAD)."""
        failures = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not retriable(exc) or failures >= self.retries:
                    raise
                failures += 1
                wait = self.delay(failures)
                logger.warning("%s: %s; retry %d of %d in %.1fs", what, _short(exc), failures, self.retries, wait)
                time.sleep(wait)


class ReadFailed(OSError):
    """A remote read failed for good: after its retries, or at once for an error retrying cannot fix."""


class FileChanged(OSError):
    """The file changed between two requests of one read (another ETag or size)."""


class _ShortRead(OSError):
    """A body ended before the size the server announced."""


# ---------------------------------------------------------------------- classifying errors


def _status(exc: BaseException) -> Optional[int]:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):  # botocore ClientError
        return resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return getattr(resp, "status_code", None)  # requests.HTTPError


def _s3_code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None)
    return str(resp.get("Error", {}).get("Code", "")) if isinstance(resp, dict) else ""


def _transient_types() -> tuple[type, ...]:
    import http.client

    types: list[type] = [OSError, http.client.HTTPException]
    try:
        import urllib3

        types.append(urllib3.exceptions.HTTPError)
    except ImportError:  # pragma: no cover
        pass
    try:
        import botocore.exceptions

        types.append(botocore.exceptions.BotoCoreError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def retriable(exc: BaseException) -> bool:
    """Whether waiting and trying again can help."""
    if isinstance(exc, (FileChanged, ReadFailed, FileNotFoundError, PermissionError, IsADirectoryError,
                        NotADirectoryError, io.UnsupportedOperation)):
        return False
    if _s3_code(exc) in _S3_RETRY_CODES:
        return True
    status = _status(exc)
    if status is not None:
        return status >= 500 or status in _RETRY_STATUS
    return isinstance(exc, _transient_types())


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower()


def _short(exc: BaseException) -> str:
    msg = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {msg}" if msg != type(exc).__name__ else msg


# -------------------------------------------------------------------------- the reader


class RetryingReader(io.RawIOBase):
    """A remote file as a raw, seekable byte stream that survives stalls and dropped connections.

    `opener.open(offset)` returns a body positioned at `offset`; `opener.size` is the file's
    size once known. Reads go in chunks of `CHUNK` bytes, so that a failure costs at most one
    chunk and a resumed read starts near where the stream broke.
    """

    CHUNK = 1 << 16

    def __init__(self, uri: str, opener: Any, policy: RetryPolicy) -> None:
        super().__init__()
        self.uri = uri
        self._opener = opener
        self._policy = policy
        self._pos = 0
        self._body: Any = None
        self._failures = 0
        self._attempt(lambda body: None)  # open now: a file that cannot be opened fails here

    @property
    def size(self) -> Optional[int]:
        return self._opener.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = offset
        elif whence == io.SEEK_CUR:
            new = self._pos + offset
        elif whence == io.SEEK_END:
            if self.size is None:
                raise io.UnsupportedOperation(f"{self.uri}: the size is unknown, cannot seek from the end")
            new = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        new = max(0, new)
        if new != self._pos:  # the next read opens the file there
            self._close_body()
            self._pos = new
        return self._pos

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.CHUNK)
        data = self._attempt(lambda body: body.read(n))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._close_body()
        closer = getattr(self._opener, "close", None)
        if closer is not None:
            closer()
        super().close()

    def random_access(self) -> bool:
        """Whether seeking is cheap (a server that ignores Range makes every seek a re-read)."""
        probe = getattr(self._opener, "ranges_supported", None)
        return True if probe is None else bool(probe())

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass

    def _attempt(self, fn: Callable[[Any], Any]) -> Any:
        while True:
            try:
                if self._body is None:
                    self._body = self._opener.open(self._pos)
                data = fn(self._body)
                if data is not None:
                    if data:
                        self._pos += len(data)
                        self._failures = 0
                    elif self.size is not None and self._pos < self.size:
                        raise _ShortRead(f"the body ended at byte {self._pos} of {self.size}")
                return data
            except Exception as exc:
                self._close_body()
                if not retriable(exc):
                    raise ReadFailed(f"{self.uri}: {self._explain(exc)}") from exc
                self._failures += 1
                if self._failures > self._policy.retries:
                    raise ReadFailed(
                        f"{self.uri}: {self._explain(exc)} (gave up after {self._failures} attempts, at byte {self._pos})"
                    ) from exc
                wait = self._policy.delay(self._failures)
                logger.warning(
                    "%s: %s at byte %d; retry %d of %d in %.1fs",
                    self.uri, _short(exc), self._pos, self._failures, self._policy.retries, wait,
                )
                time.sleep(wait)

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, FileChanged) or _status(exc) == 412 or _s3_code(exc) == "PreconditionFailed":
            return f"the file changed while it was read ({_short(exc)})"
        if _is_timeout(exc):
            return f"timed out: no answer or no bytes for {self._policy.read_timeout_s:g}s ({_short(exc)})"
        return _short(exc)


def _skip(body: Any, n: int, uri: str) -> None:
    """Read and drop the first n bytes of a body (a server that ignored a Range request)."""
    while n > 0:
        data = body.read(min(n, READ_BUFFER))
        if not data:
            raise _ShortRead(f"{uri}: the body ended {n} bytes before the offset to resume at")
        n -= len(data)


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _HTTPOpener:
    def __init__(self, uri: str, policy: RetryPolicy) -> None:
        import requests

        self.uri = uri
        self.policy = policy
        self.session = requests.Session()  # keeps the connection between attempts where it can
        self.size: Optional[int] = None
        self._validator: dict[str, str] = {}
        self._ranges: Optional[bool] = None  # unknown until a Range request was answered

    def open(self, offset: int) -> Any:
        import smart_open.http

        headers = {"Accept-Encoding": "identity", **self._validator}
        if offset and self._ranges is not False:
            headers["Range"] = f"bytes={offset}-"
        body = smart_open.http.open(
            self.uri, "rb", headers=headers, session=self.session, buffer_size=RetryingReader.CHUNK,
            timeout=(self.policy.connect_timeout_s, self.policy.read_timeout_s),
        )
        try:
            resp = body.response
            if resp.status_code == 206:
                m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if not m or int(m.group(1)) != offset:
                    raise OSError(f"asked for bytes={offset}-, the server answered Content-Range: {resp.headers.get('Content-Range')}")
                self._ranges = True
                if self.size is None and m.group(3) != "*":
                    self.size = int(m.group(3))
            else:
                length = resp.headers.get("Content-Length", "")
                length_n = int(length) if length.isdigit() else None
                if self.size is not None and length_n is not None and length_n != self.size:
                    raise FileChanged(f"its size went from {self.size} to {length_n} bytes")
                self.size = length_n if self.size is None else self.size
                if offset:
                    if "Range" in headers:
                        self._ranges = False
                        logger.info("%s: the server ignores Range requests; resuming by reading from the start", self.uri)
                    _skip(body, offset, self.uri)
            if not self._validator:
                etag, modified = resp.headers.get("ETag", ""), resp.headers.get("Last-Modified")
                if etag and not etag.startswith("W/"):  # If-Match compares strongly
                    self._validator = {"If-Match": etag}
                elif modified:
                    self._validator = {"If-Unmodified-Since": modified}
            return body
        except BaseException:
            body.close()
            raise

    def close(self) -> None:
        self.session.close()

    def ranges_supported(self) -> bool:
        if self._ranges is None:
            if self.size is not None and self.size < 2:
                return True
            self.open(1).close()
        return bool(self._ranges)


class _S3Opener:
    def __init__(self, uri: str, policy: RetryPolicy) -> None:
        import boto3

        bucket, _, key = uri.split("://", 1)[1].partition("/")
        self.uri, self.bucket, self.key = uri, bucket, key
        # A fresh session reads AWS_ENDPOINT_URL, credentials, profile... from the environment now.
        self.client = boto3.session.Session().client("s3", config=policy.botocore_config(retries=False))
        self.size: Optional[int] = None
        self._etag: Optional[str] = None

    def open(self, offset: int) -> Any:
        if self.size is not None and offset >= self.size:
            return io.BytesIO(b"")
        kw: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if offset:
            kw["Range"] = f"bytes={offset}-"
        if self._etag:
            kw["IfMatch"] = self._etag
        r = self.client.get_object(**kw)
        body = r["Body"]
        try:
            self._etag = self._etag or r.get("ETag")
            m = _CONTENT_RANGE.fullmatch(r.get("ContentRange") or "")
            if m:
                if int(m.group(1)) != offset:
                    raise OSError(f"asked for bytes={offset}-, the store answered ContentRange: {r.get('ContentRange')}")
                if self.size is None and m.group(3) != "*":
                    self.size = int(m.group(3))
            else:
                if self.size is None:
                    self.size = int(r.get("ContentLength", -1)) if r.get("ContentLength") is not None else None
                _skip(body, offset, self.uri)  # an S3-compatible store that ignored the Range
            return body
        except BaseException:
            body.close()
            raise


class _SmartOpenOpener:
    """Any other scheme smart_open knows (gs://): reopened and sought on a retry."""

    size: Optional[int] = None

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def open(self, offset: int) -> Any:
        import smart_open

        body = smart_open.open(self.uri, "rb", compression="disable")
        if offset:
            body.seek(offset)
        return body


def open_raw(uri: str, policy: RetryPolicy = RetryPolicy()) -> Any:
    """The raw (still compressed) byte stream of a file; remote ones retry and resume."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        return open(uri[len("file://") :] if scheme else uri, "rb")
    if scheme in ("http", "https"):
        return RetryingReader(uri, _HTTPOpener(uri, policy), policy)
    if scheme in ("s3", "s3a", "s3n"):
        return RetryingReader(uri, _S3Opener(uri, policy), policy)
    return RetryingReader(uri, _SmartOpenOpener(uri), policy)


def random_access_view(raw: Any) -> Optional[Any]:
    """A seekable binary stream over `raw` if seeking it is cheap (Parquet reads its footer
    first), else None: then the caller copies the file (`spool`)."""
    if isinstance(raw, RetryingReader):
        if not raw.random_access():
            raw.seek(0)
            return None
        return io.BufferedReader(raw, buffer_size=RetryingReader.CHUNK)
    return raw


def spool(stream: Any) -> Any:
    """Copy a stream to an anonymous temporary file (deleted on close), positioned at 0."""
    tmp = tempfile.TemporaryFile(prefix="pipeline-parquet-")
    try:
        shutil.copyfileobj(stream, tmp, READ_BUFFER)
        tmp.seek(0)
    except BaseException:
        tmp.close()
        raise
    return tmp
