"""A real Ray head for tests, started with `ray start --head --block` on loopback with its own
ports, temp dir and token, and stopped by its own process (never a global `ray stop`, which
would take down every other Ray cluster on this machine)."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, span: int = 0) -> list[int]:
    """n distinct free ports, and (span > 0) one more base port with `span` free ports after it."""
    rng = random.Random()
    chosen: set[int] = set()
    out: list[int] = []
    while len(out) < n:
        p = rng.randrange(20000, 60000)
        if p not in chosen and _free(p):
            chosen.add(p)
            out.append(p)
    if span:
        for _ in range(2000):
            base = rng.randrange(20000, 60000 - span)
            block = range(base, base + span)
            if not chosen.intersection(block) and all(_free(p) for p in block):
                out.append(base)
                return out
        raise RuntimeError("no free port range")
    return out


@dataclass
class RayHead:
    dashboard_url: str  # http://127.0.0.1:PORT, what `pipeline submit --address` takes
    gcs_address: str
    temp_dir: Path
    token_path: Path
    proc: subprocess.Popen
    log: Path

    def client_env(self) -> dict[str, str]:
        """Environment for a process that talks to this head (the token, no stray address)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
        env["RAY_AUTH_TOKEN_PATH"] = str(self.token_path)
        return env

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster: those in the head's session, and any that left it
        but still name its temp dir."""
        found = []
        marker = str(self.temp_dir)
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid == os.getpid():
                    continue
                if os.getsid(p.pid) == self.proc.pid or marker in " ".join(p.info["cmdline"] or []):
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
                continue
        return found

    def stop(self) -> None:
        """What `ray stop` does, for this cluster's processes only: SIGTERM, a grace period, SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
            left = self.processes()
            for p in left:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            gone, alive = psutil.wait_procs(left, timeout=grace)
            if not alive and not self.processes():
                break
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_ray_head(num_cpus: int = 2, env: dict[str, str] | None = None, timeout: float = 90) -> RayHead:
    """`ray start --head` on 127.0.0.1 with token authentication (Ray's default for new local
    clusters), a token of its own, and the dashboard (the Jobs API) on a free port."""
    # Short: Ray puts unix sockets under the temp dir, and their paths must stay < 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(16))
    gcs, dash, agent_http, agent_grpc, rtenv, metrics, nm, om, client, workers = free_ports(9, span=40)
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [
        ray_bin, "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={rtenv}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--ray-client-server-port={client}",
        f"--min-worker-port={workers}", f"--max-worker-port={workers + 39}",
        f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
    ]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    full_env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # jobs run `python -m pipeline ...`: the test's interpreter must be the `python` they find
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), full_env.get("PATH", "")])
    full_env.update(env or {})
    log = temp_dir / "ray-start.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=full_env, start_new_session=True)
    head = RayHead(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", temp_dir, token_path, proc, log)
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token_path.read_text()}"}
    while True:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-4000:]
            head.stop()
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{text}")
        try:
            # /api/version needs the token; answering it means the Jobs API is up
            if requests.get(f"{head.dashboard_url}/api/version", headers=headers, timeout=2).ok:
                return head
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            head.stop()
            raise RuntimeError(f"the Ray dashboard did not answer on {head.dashboard_url} within {timeout}s")
        time.sleep(0.5)
