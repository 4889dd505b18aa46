"""The whole commit protocol with its output on S3 (the loopback SeaweedFS server): parts,
commit records, publish, resume after a driver kill at every publish step, incremental
runs, retry-errors, two writers, housekeeping. On S3 a move is a copy and a delete, there
is no rename, and the switch rests on conditional PUTs (If-None-Match, If-Match).

Rows are computed by the fake engine of fakejob.py (the real command otherwise);
test_exactly_once_e2e.py runs a real engine into S3.
"""

from __future__ import annotations

import time
import uuid

import pytest

from clijob import write_jsonl_corpus, write_spec
from harness import assert_exactly_once, error_line, fake_model, run_fake, start_fake, summary, task_ids
from pipeline.errors import ExitStatus
from pipeline.io.commit import read_dataset
from pipeline.io.manifest import read_manifest
from pipeline.io.store import Store


@pytest.fixture
def s3_out(s3_server):
    bucket = "out-" + uuid.uuid4().hex[:8]
    s3_server.create_bucket(bucket)
    return f"s3://{bucket}/job"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fake_model(tmp_path_factory.mktemp("fake-model"))


def spec_for(tmp_path, model, corpus, out, **output):
    return write_spec(
        tmp_path / "job.yaml",
        input={"paths": [str(corpus)], "id_field": "id"},
        output={"path": out, "rows_per_unit": 20, "target_file_mib": 0.004, **output},
        tasks={"sentiment": {}, "summarization": {}},
        model={"path": str(model)},
        engine={"batch_rows": 8, "batches_in_flight": 3},
    )


def test_store_conditional_writes_on_s3(s3_out):
    store = Store(s3_out)
    assert store.conditional_writes()  # SeaweedFS honours If-None-Match / If-Match
    assert store.create("x", b"1") and not store.create("x", b"2")
    data, tag = store.read_tagged("x")
    assert data == b"1"
    assert store.replace_if("x", b"3", '"not-the-etag"') is None
    new = store.replace_if("x", b"3", tag)
    assert new is not None and store.read_bytes("x") == b"3" and store.replace_if("x", b"4", tag) is None


@pytest.mark.parametrize("fault", ["commit-record:4", "publish-step:1", "publish-switch:0", "publish-pointer:0"])
def test_killed_then_rerun_on_s3(tmp_path, model, s3_out, fault):
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 40, "b.jsonl": 25})
    spec = spec_for(tmp_path, model, corpus, s3_out)
    assert run_fake("run", str(spec), env={"PIPELINE_FAULT": fault}, check=False).returncode == 86
    run_fake("run", str(spec))
    assert_exactly_once(s3_out, ids)
    store = Store(s3_out)
    m = read_manifest(store)
    listed = {rel for d in m.datasets for rel in store.list(d)}
    assert listed == m.files()  # nothing but the published files in the dataset folders
    assert not list(store.list("_staging"))


def test_incremental_retry_and_housekeeping_on_s3(tmp_path, model, s3_out):
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 30})
    (corpus / "b.jsonl").write_text('{"id": "poison", "text": "FAIL here"}\n{"id": "fine", "text": "fine"}\n')
    ids += ["poison", "fine"]
    spec = spec_for(tmp_path, model, corpus, s3_out, retention_hours=0, target_file_mib=64)
    run_fake("run", str(spec), env={"PIPELINE_FAKE_FAIL": "FAIL"})
    errors = read_dataset(s3_out, "errors")
    assert sorted(errors["row_id"].to_pylist()) == ["poison", "poison"]
    # dead letters recomputed in place (the fake engine no longer fails them)
    run_fake("retry-errors", str(spec), "--kinds", "generation_error")
    assert_exactly_once(s3_out, ids) and not read_dataset(s3_out, "errors").num_rows
    # a changed file replaces its rows; a new one is added
    ids = [i for i in ids if not i.startswith("doc-")] + write_jsonl_corpus(corpus, {"a.jsonl": 36})
    ids += write_jsonl_corpus(corpus, {"c.jsonl": 5}, start=700)
    run_fake("run", str(spec), "--incremental")
    assert_exactly_once(s3_out, ids)
    # retention 0: files of replaced versions are gone, the live ones all there
    store = Store(s3_out)
    m = read_manifest(store)
    assert {rel for d in m.datasets for rel in store.list(d)} == m.files()
    assert len(m.datasets["sentiment"]) == 3  # one file per input file, not per batch


def test_two_writers_on_s3(tmp_path, model, s3_out):
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 48})
    spec = spec_for(tmp_path, model, corpus, s3_out)
    first = start_fake("run", str(spec), log=tmp_path / "first.log", env={"PIPELINE_FAKE_DELAY": "0.5"})
    try:
        store = Store(s3_out)
        deadline = time.monotonic() + 30
        while not store.exists("_lease.json") and time.monotonic() < deadline:
            time.sleep(0.1)
        p = run_fake("run", str(spec), check=False)
        assert p.returncode == ExitStatus.BUSY and "output busy: run " in error_line(p)
        p = run_fake("run", str(spec), "--wait")
        assert "up-to-date" in p.stdout
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert_exactly_once(s3_out, ids)
    assert summary(s3_out)["rows"] == 48 and len(task_ids(s3_out, "sentiment")) == 48
