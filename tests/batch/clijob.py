"""Helpers for batch tests that drive the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import yaml


def write_jsonl_corpus(folder: Path, files: dict[str, int], start: int = 0) -> list[str]:
    """Files of short review-like rows with explicit ids; returns the ids written."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, k = [], start
    for name, n in files.items():
        with open(folder / name, "w", encoding="utf-8") as f:
            for _ in range(n):
                rid = f"doc-{k:06d}"
                f.write(json.dumps({"id": rid, "text": f"Row {k}: the film was {'great' if k % 3 else 'slow'} and long."}) + "\n")
                ids.append(rid)
                k += 1
    return ids


def write_spec(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def run_cli(*args: str, env: dict | None = None, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cli_cmd(*args), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-6000:]}"
    return p


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    """The CLI in its own session (process group), so that a test can kill it whole."""
    f = open(log, "w")  # noqa: SIM115 - closed when the process is reaped
    return subprocess.Popen(cli_cmd(*args), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def committed_rows(out: Path) -> int:
    total = 0
    for rec in out.glob("_staging/*/_commits/*.json"):
        try:
            total += json.loads(rec.read_text())["rows"]
        except (OSError, ValueError):
            pass
    return total


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before: {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for: {what}")


def find_processes(marker: str, session: int | None = None) -> list[psutil.Process]:
    """Processes whose command line holds marker; with session, only those of that session
    (the CLI's own Ray and vLLM processes, not another job's on the same machine)."""
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            text = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker not in text or p.pid == os.getpid():
            continue
        try:
            if session is not None and os.getsid(p.pid) != session:
                continue
        except ProcessLookupError:
            continue
        found.append(p)
    return found


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything in its session: what a crashed machine looks like."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    # Ray and vLLM children that left the group are orphans now: wait for them to go.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        find_processes("InferenceActor", proc.pid) or find_processes("EngineCore", proc.pid)
    ):
        time.sleep(0.5)
