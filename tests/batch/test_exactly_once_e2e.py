"""The commit protocol end to end on the real engine (Ray + vLLM on the tiny model), with the
output on the loopback S3 server: a run killed half way (driver SIGKILL, lease held) while a
second `pipeline run` on the same output is told it is busy; the rerun takes the dead
driver's lease over and resumes; every input row lands exactly once.
(The fake-engine tests in test_exactly_once*.py and test_fault_harness.py cover each step.)"""

from __future__ import annotations

import json
import uuid

import pytest

from clijob import kill_group, run_cli, start_cli, wait_for, write_jsonl_corpus, write_spec
from harness import assert_exactly_once
from pipeline.errors import ExitStatus
from pipeline.io.manifest import read_manifest
from pipeline.io.store import Store

pytestmark = pytest.mark.engine


def committed_rows_s3(store: Store) -> int:
    total = 0
    for rel in store.list("_staging"):
        if "/_commits/" in rel:
            try:
                total += json.loads(store.read_bytes(rel))["rows"]
            except (OSError, ValueError):
                pass
    return total


def test_real_engine_into_s3_killed_resumed_second_writer_busy(tmp_path, tiny_model, s3_server):
    bucket = "e2e-" + uuid.uuid4().hex[:8]
    s3_server.create_bucket(bucket)
    out = f"s3://{bucket}/out"
    ids = write_jsonl_corpus(tmp_path / "corpus", {f"p{i}.jsonl": 100 for i in range(3)})
    spec = write_spec(
        tmp_path / "job.yaml",
        input={"paths": [str(tmp_path / "corpus")], "id_field": "id"},
        output={"path": out, "rows_per_unit": 20},
        tasks={"sentiment": {}, "summarization": {"max_words": 5, "ends_at": "line", "sampling": {"ignore_eos": True, "max_tokens": 32}}},
        model={"path": str(tiny_model)},
        engine={"max_model_len": 512, "batch_rows": 8},
    )
    store = Store(out)
    proc = start_cli("run", str(spec), log=tmp_path / "run1.log")
    try:
        wait_for(lambda: store.exists("_lease.json"), 600, "the first run holds the lease", proc)
        second = run_cli("run", str(spec), check=False)  # while the first starts its engine
        assert second.returncode == ExitStatus.BUSY, second.stderr[-3000:]
        assert "output busy: run " in second.stderr
        wait_for(lambda: committed_rows_s3(store) >= len(ids) // 5, 600, "a fifth committed", proc)
    finally:
        kill_group(proc)
    done_at_kill = committed_rows_s3(store)
    assert done_at_kill < len(ids), "the run finished before the kill: make the corpus bigger"
    assert read_manifest(store) is None

    run_cli("run", str(spec))  # the dead driver's lease (same host, process gone) is taken over at once
    s = json.loads(store.read_bytes("summary.json"))
    assert s["rows"] == len(ids) and s["rows_resumed"] >= done_at_kill
    assert_exactly_once(out, ids)
    m = read_manifest(store)
    assert {rel for d in m.datasets for rel in store.list(d)} == m.files()
    assert len(m.datasets["sentiment"]) == 3  # one file per input file
