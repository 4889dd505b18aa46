"""Helpers for tests that run the real `pipeline` command with the fake engine (fakejob.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pyarrow.compute as pc

from pipeline.io.commit import read_dataset
from pipeline.io.manifest import read_manifest
from pipeline.io.store import Store

FAKEJOB = str(Path(__file__).with_name("fakejob.py"))
TASKS = ("sentiment", "summarization")


def fake_model(folder: Path) -> Path:
    """A model folder that planning accepts (config and weights to fingerprint); the fake
    engine never loads it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "fake": True}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / "tokenizer.json").write_text("{}")
    return folder


def error_line(p: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed for a person (a traceback would be more)."""
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), p.stderr[-3000:]
    assert not any(line.startswith("Traceback") for line in lines), p.stderr[-3000:]
    return lines[-1]


def fake_cmd(*args: str) -> list[str]:
    return [sys.executable, FAKEJOB, *args]


def run_fake(*args: str, env: Optional[dict] = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    p = subprocess.run(fake_cmd(*args), capture_output=True, text=True, timeout=timeout, env=e)
    if check:
        assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    return p


def start_fake(*args: str, log: Path, env: Optional[dict] = None) -> subprocess.Popen:
    f = open(log, "w")  # noqa: SIM115 - closed when the process is reaped
    return subprocess.Popen(fake_cmd(*args), stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)


def task_ids(out: str, task: str, version: Optional[int] = None) -> list[str]:
    """Row ids of one task in the published version (or in `version`): results, then error records."""
    ok = read_dataset(str(out), task, version=version)["row_id"].to_pylist()
    err = read_dataset(str(out), "errors", version=version)
    err = err.filter(pc.equal(err["task"], task))["row_id"].to_pylist()
    return ok + err


def assert_exactly_once(out, ids, tasks=TASKS) -> None:
    for task in tasks:
        got = task_ids(str(out), task)
        assert len(got) == len(ids), f"{task}: {len(got)} rows for {len(ids)} inputs"
        assert sorted(got) == sorted(ids), task


def summary(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text()) if "://" not in str(out) else Store(str(out)).read_json("summary.json")


def manifest_version(out) -> int:
    m = read_manifest(Store(str(out)))
    return m.version if m else 0
