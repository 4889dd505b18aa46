"""`pipeline serve` in a subprocess (its own session, its own local Ray cluster) on loopback,
for the endpoint tests: one server per test module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import httpx
import psutil
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    key: Optional[str]
    model: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, timeout: float = 60, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, **kw)

    def async_client(self, timeout: float = 120, **kw) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, limits=limits, **kw)

    def engine_state(self) -> dict[str, Any]:
        with self.client(timeout=10) as c:
            r = c.get("/health/ready")
        r.raise_for_status()
        return r.json()["engine"]

    def wait_idle(self, timeout: float = 30) -> dict[str, Any]:
        """Until nothing is in the replica's engine (or admitted); the state seen last."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.engine_state()
            if not s["in_flight"] and not s["admitted"] and not s["running"] and not s["waiting"]:
                return s
            if time.monotonic() > deadline:
                return s
            time.sleep(0.1)

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def engine_processes(self) -> list[psutil.Process]:
        """The vLLM engine-core processes of this server's replicas."""
        out = []
        for p in psutil.process_iter(["cmdline", "name"]):
            try:
                title = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
                if "EngineCore" in title and os.getsid(p.pid) == self.proc.pid:
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                continue
        return out


def write_spec(path: Path, model: str, port: int, **sections: Any) -> Path:
    spec: dict[str, Any] = {
        "model": {"path": model},
        "engine": {"max_model_len": 512, "max_num_seqs": 64, "kv_cache_gib": 0.25},
        "http": {"host": "127.0.0.1", "port": port},
        "resources": {"num_cpus": 4},
    }
    for k, v in sections.items():
        spec[k] = {**spec.get(k, {}), **v} if isinstance(v, dict) else v
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@contextmanager
def serve_process(tmp: Path, model: str, key: Optional[str] = None, startup_timeout: float = 240, **sections: Any) -> Iterator[Server]:
    port = free_port()
    env = dict(os.environ)
    if key is not None:
        keys = tmp / "api-keys"
        keys.write_text(f"# test keys\n{key}\n")
        sections.setdefault("auth", {})["api_keys_file"] = str(keys)
    spec = write_spec(tmp / "serve.yaml", model, port, **sections)
    log = tmp / "serve.log"
    f = open(log, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "-v", "serve", str(spec)], stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = Server(f"http://127.0.0.1:{port}", proc, log, key, Path(model).name)
    try:
        deadline = time.monotonic() + startup_timeout
        while "serving on" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise AssertionError(f"pipeline serve exited ({proc.returncode}):\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline serve did not come up in {startup_timeout}s:\n{server.log_tail()}")
            time.sleep(0.25)
        yield server
    finally:
        stop(server)
        f.close()


def stop(server: Server, timeout: float = 90) -> Optional[int]:
    """SIGTERM (drain, then stop), SIGKILL of the whole session if that hangs."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # Ray and vLLM processes of the session that outlived the driver.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == proc.pid:
                    left.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        if not left:
            break
        if time.monotonic() > deadline - 20:
            for p in left:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.5)
    return proc.returncode
