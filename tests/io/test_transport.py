"""Remote reads that stall, fail or change: timeouts, bounded retries with backoff, resume.

The servers are real HTTP servers on loopback (http.server subclasses) that misbehave on
purpose: stall in the middle of a body, answer 500, ignore Range, change the file between
two requests. S3 goes through a small S3-speaking server of the same kind (GET and HEAD of
objects, ListObjectsV2): the real S3 server of the suite (SeaweedFS) cannot be made to
stall or fail on demand, so this one stands in for it there; the ordinary S3 path is tested
against SeaweedFS in test_sources.py.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import pytest

from pipeline.config import InputConfig
from pipeline.io.readers import read_units
from pipeline.io.sources import InputError, SourceFile, list_sources

# Small timeouts and backoffs: every test ends in a few seconds, misbehaving server or not.
FAST = {"connect_timeout_s": 2.0, "read_timeout_s": 0.5, "retry_backoff_s": 0.02, "retry_backoff_max_s": 0.1}
HANG_GUARD_S = 60  # a read still running after this long is hung: the test fails instead of hanging


@dataclass
class Behaviour:
    """How the server answers for one path. Counters count down per GET."""

    body: bytes
    etag: str = ""
    ranges: bool = True  # honour Range requests (206); False: always the whole body (200)
    stall_at: Optional[int] = None  # absolute byte offset where a body stops flowing
    stalls: int = 0  # how many GETs stall at stall_at (-1: all of them)
    fail: int = 0  # how many GETs (and HEADs) answer `fail_status` first (-1: all)
    fail_status: int = 500
    head_fail: int = 0
    requests: list[tuple[str, Optional[str]]] = field(default_factory=list)  # (method, Range header)

    def __post_init__(self) -> None:
        self.etag = self.etag or '"' + hashlib.md5(self.body).hexdigest() + '"'

    def change(self, body: bytes) -> None:
        self.body = body
        self.etag = '"' + hashlib.md5(body).hexdigest() + '"'


class FlakyServer:
    """A ThreadingHTTPServer on 127.0.0.1 serving `Behaviour`s by path."""

    def __init__(self, s3: bool = False) -> None:
        self.paths: dict[str, Behaviour] = {}
        self.release = threading.Event()  # set at teardown: stalled handlers finish
        self.s3 = s3
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802
                b = server.paths.get(self.path.split("?", 1)[0])
                if b is None:
                    return self._status(404)
                b.requests.append(("HEAD", None))
                if b.head_fail:
                    b.head_fail -= 1 if b.head_fail > 0 else 0
                    return self._status(b.fail_status, body=False)
                self.send_response(200)
                self.send_header("Content-Length", str(len(b.body)))
                self.send_header("ETag", b.etag)
                self.send_header("Accept-Ranges", "bytes" if b.ranges else "none")
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                path, _, query = self.path.partition("?")
                if server.s3 and "list-type=2" in query:
                    return server.list_objects(self, path, query)
                b = server.paths.get(path)
                if b is None:
                    return self._status(404)
                rng = self.headers.get("Range")
                b.requests.append(("GET", rng))
                if b.fail:
                    b.fail -= 1 if b.fail > 0 else 0
                    return self._status(b.fail_status)
                match = self.headers.get("If-Match")
                if match and match != b.etag:
                    return self._status(412)
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and b.ranges and int(m.group(1)) < len(b.body):
                    start = int(m.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(b.body) - 1}/{len(b.body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(b.body) - start))
                self.send_header("ETag", b.etag)
                if not b.ranges:
                    self.send_header("Accept-Ranges", "none")
                self.end_headers()
                data = b.body[start:]
                stall = b.stall_at is not None and b.stalls != 0 and start < b.stall_at
                try:
                    if stall:
                        if b.stalls > 0:
                            b.stalls -= 1
                        self.wfile.write(data[: b.stall_at - start])
                        self.wfile.flush()
                        server.release.wait(30)  # the client must give up long before this
                        return
                    self.wfile.write(data)
                except OSError:  # the client went away
                    pass

            def _status(self, code: int, body: bool = True) -> None:
                msg = f"<Error><Code>{'InternalError' if code >= 500 else 'Error'}</Code><Message>{code}</Message></Error>".encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(msg) if body else 0))
                self.end_headers()
                if body and self.command != "HEAD":
                    self.wfile.write(msg)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.list_stall = False
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def add(self, path: str, b: Behaviour) -> str:
        self.paths[path] = b
        return self.url + path

    def list_objects(self, handler: Any, path: str, query: str) -> None:
        """A minimal ListObjectsV2 (one page), or a stall when `list_stall` is set."""
        if self.list_stall:
            handler.send_response(200)
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            handler.wfile.write(b"<?xml")
            handler.wfile.flush()
            self.release.wait(30)
            return
        bucket = path.strip("/")
        prefix = urllib.parse.parse_qs(query).get("prefix", [""])[0]
        items = "".join(
            f"<Contents><Key>{p.split('/', 2)[2]}</Key><Size>{b.body and len(b.body)}</Size><ETag>{b.etag}</ETag></Contents>"
            for p, b in sorted(self.paths.items())
            if p.startswith(f"/{bucket}/{prefix}")
        )
        xml = f'<?xml version="1.0"?><ListBucketResult><Name>{bucket}</Name><IsTruncated>false</IsTruncated>{items}</ListBucketResult>'.encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/xml")
        handler.send_header("Content-Length", str(len(xml)))
        handler.end_headers()
        handler.wfile.write(xml)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer()
    yield server
    server.close()


@pytest.fixture
def flaky_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyServer]:
    server = FlakyServer(s3=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    yield server
    server.close()


def corpus(n: int) -> bytes:
    return "".join(json.dumps({"id": i, "text": f"document number {i} " + "x" * 40}) + "\n" for i in range(n)).encode()


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() run in a thread; fails the test if it has not returned after `seconds` (a hang)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds}s: the read hangs"
    if "error" in out:
        raise out["error"]
    return out["value"]


def read_rows(uri: str, size: int, rpu: int = 500, **cfg: Any) -> list[dict]:
    c = InputConfig(paths=[uri], id_field="id", **{**FAST, **cfg})
    src = SourceFile(uri=uri, size=size, fingerprint="t", format="jsonl", compression=None)
    return within(HANG_GUARD_S, lambda: [r for t in read_units(src, c, rpu) for r in t.to_pylist()])


def assert_complete(rows: list[dict], n: int) -> None:
    assert [r["error_kind"] for r in rows if r["error_kind"]] == []
    assert [r["row_id"] for r in rows] == [str(i) for i in range(n)]
    assert rows[-1]["file_rows"] == n


# ------------------------------------------------------------------------------- HTTP


def test_http_stall_mid_body_resumes_with_a_range_request(flaky: FlakyServer) -> None:
    body = corpus(2000)
    b = Behaviour(body, stall_at=len(body) // 2, stalls=1)
    rows = read_rows(flaky.add("/stall.jsonl", b), len(body), read_retries=3)
    assert_complete(rows, 2000)
    (first, _), (second, rng) = b.requests
    m = re.fullmatch(r"bytes=(\d+)-", rng or "")
    assert second == "GET" and m and 0 < int(m.group(1)) <= len(body) // 2, b.requests


def test_http_stall_without_range_support_restarts_and_skips(flaky: FlakyServer) -> None:
    body = corpus(2000)
    b = Behaviour(body, ranges=False, stall_at=len(body) // 2, stalls=1)
    rows = read_rows(flaky.add("/norange.jsonl", b), len(body), read_retries=3)
    assert_complete(rows, 2000)  # the bytes before the stall are skipped, not read twice
    assert len(b.requests) == 2


def test_http_stall_that_never_clears_gives_a_read_error(flaky: FlakyServer) -> None:
    body = corpus(2000)
    b = Behaviour(body, stall_at=len(body) // 2, stalls=-1)
    rows = read_rows(flaky.add("/stuck.jsonl", b), len(body), read_retries=2)
    err = rows[-1]
    good = rows[:-1]
    assert 0 < len(good) < 2000 and [r["row_id"] for r in good] == [str(i) for i in range(len(good))]
    assert (err["error_kind"], err["position"], err["covers_to"]) == ("read_error", len(good), -1)
    msg = err["error_message"]
    assert msg.startswith(f"rows from position {len(good)} to the end of the file could not be read: ")
    assert "3 attempts" in msg and "timed out" in msg.lower(), msg
    assert len(b.requests) == 3  # one read and two retries: bounded


def test_http_500_a_few_times_then_the_whole_file(flaky: FlakyServer) -> None:
    body = corpus(300)
    b = Behaviour(body, fail=3)
    rows = read_rows(flaky.add("/busy.jsonl", b), len(body), read_retries=4)
    assert_complete(rows, 300)
    assert len(b.requests) == 4


def test_http_always_500_gives_a_clear_read_error(flaky: FlakyServer) -> None:
    body = corpus(300)
    b = Behaviour(body, fail=-1)
    (row,) = read_rows(flaky.add("/down.jsonl", b), len(body), read_retries=2)
    assert (row["error_kind"], row["position"], row["covers_to"]) == ("read_error", 0, -1)
    msg = row["error_message"]
    assert msg.startswith("rows from position 0 to the end of the file could not be read: ")
    assert "500" in msg and "3 attempts" in msg and flaky.url in msg, msg
    assert len(b.requests) == 3


def test_http_not_found_is_not_retried(flaky: FlakyServer) -> None:
    b = Behaviour(b"", fail=-1, fail_status=404)
    (row,) = read_rows(flaky.add("/missing.jsonl", b), -1, read_retries=5)
    assert row["error_kind"] == "read_error" and "404" in row["error_message"]
    assert len(b.requests) == 1  # retrying cannot make a missing file appear


def test_http_file_changed_between_attempts(flaky: FlakyServer) -> None:
    """A retry must not splice two versions of a file: the resumed request carries the first
    response's ETag (If-Match) and the server refuses it once the file changed."""
    body = corpus(2000)
    b = Behaviour(body, stall_at=len(body) // 2, stalls=1)
    uri = flaky.add("/moving.jsonl", b)
    c = InputConfig(paths=[uri], id_field="id", read_retries=3, **FAST)
    src = SourceFile(uri=uri, size=len(body), fingerprint="t", format="jsonl", compression=None)

    def read() -> list[dict]:
        out = []
        for t in read_units(src, c, 100):
            out.extend(t.to_pylist())
            if len(out) == 100:  # the first unit is out: the server changes the file meanwhile
                b.change(corpus(2500))
        return out

    rows = within(HANG_GUARD_S, read)
    err = rows[-1]
    assert err["error_kind"] == "read_error" and "changed" in err["error_message"], err
    assert [r["row_id"] for r in rows[:-1]] == [str(i) for i in range(len(rows) - 1)]


def test_http_listing_retries_a_failed_head(flaky: FlakyServer) -> None:
    body = corpus(10)
    b = Behaviour(body, head_fail=2)
    uri = flaky.add("/head.jsonl", b)
    (src,) = within(HANG_GUARD_S, lambda: list_sources(InputConfig(paths=[uri], read_retries=3, **FAST)))
    assert src.size == len(body) and b.etag in src.fingerprint
    assert [m for m, _ in b.requests] == ["HEAD"] * 3


# --------------------------------------------------------------------------------- S3


def test_s3_stall_mid_body_resumes(flaky_s3: FlakyServer) -> None:
    body = corpus(2000)
    b = Behaviour(body, stall_at=len(body) * 2 // 3, stalls=2)
    flaky_s3.add("/bucket/in/a.jsonl", b)
    rows = read_rows("s3://bucket/in/a.jsonl", len(body), read_retries=3)
    assert_complete(rows, 2000)
    assert [m for m, _ in b.requests] == ["GET"] * 3 and b.requests[2][1] is not None


def test_s3_stall_that_never_clears_gives_a_read_error(flaky_s3: FlakyServer) -> None:
    body = corpus(2000)
    b = Behaviour(body, stall_at=len(body) // 3, stalls=-1)
    flaky_s3.add("/bucket/in/b.jsonl", b)
    rows = read_rows("s3://bucket/in/b.jsonl", len(body), read_retries=1)
    assert rows[-1]["error_kind"] == "read_error" and rows[-1]["covers_to"] == -1
    assert "2 attempts" in rows[-1]["error_message"]
    assert len(b.requests) == 2


def test_s3_500_then_success(flaky_s3: FlakyServer) -> None:
    body = corpus(300)
    b = Behaviour(body, fail=2)
    flaky_s3.add("/bucket/in/c.jsonl", b)
    assert_complete(read_rows("s3://bucket/in/c.jsonl", len(body), read_retries=2), 300)


def test_s3_listing_that_stalls_fails_in_bounded_time(flaky_s3: FlakyServer) -> None:
    flaky_s3.add("/bucket/in/d.jsonl", Behaviour(corpus(3)))
    cfg = InputConfig(paths=["s3://bucket/in/"], read_retries=1, **FAST)
    assert [s.uri for s in within(HANG_GUARD_S, lambda: list_sources(cfg))] == ["s3://bucket/in/d.jsonl"]
    flaky_s3.list_stall = True
    with pytest.raises(InputError, match="cannot list"):
        within(HANG_GUARD_S, lambda: list_sources(cfg))
