"""Exactly once under real faults: one test per scenario of issue 8, each written against a
way rows were lost, doubled or a run got stuck.

They run the real `pipeline` command (CLI, planning, lease, read stage with the real
readers, parts, commit records, coverage, publish) in a subprocess, with rows computed by
the fake engine of fakejob.py instead of Ray + vLLM, so that each scenario takes seconds;
tests/batch/test_exactly_once_e2e.py runs the same protocol on the real engine.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
import time

import pyarrow.compute as pc
import pytest

from clijob import write_jsonl_corpus, write_spec
from harness import TASKS, assert_exactly_once, error_line, fake_model, run_fake, start_fake, summary, task_ids
from pipeline.errors import ExitStatus
from pipeline.io.commit import read_dataset
from pipeline.io.lease import LeaseInfo
from pipeline.io.manifest import read_manifest
from pipeline.io.store import Store


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return fake_model(tmp_path_factory.mktemp("fake-model"))


def job(tmp_path, model, paths, out=None, **over):
    sections = {
        "input": {"paths": [str(p) for p in paths], "id_field": "id"},
        "output": {"path": str(out or tmp_path / "out"), "rows_per_unit": 40},
        "tasks": {"sentiment": {}, "summarization": {}},
        "model": {"path": str(model)},
        "engine": {"batch_rows": 16, "batches_in_flight": 2},
    }
    for k, v in over.items():
        sections[k] = {**sections.get(k, {}), **v} if isinstance(v, dict) else v
    return write_spec(tmp_path / "job.yaml", **sections)


# -- a file server whose GETs can be made to fail ------------------------------------------
class _FlakyHandler(http.server.SimpleHTTPRequestHandler):
    failing = False

    def do_GET(self):  # noqa: N802 - HEAD (the listing's fingerprint) keeps working
        if type(self).failing:
            self.send_error(500, "failing on purpose")
            return
        super().do_GET()

    def log_message(self, *a):
        pass


@pytest.fixture
def flaky_http(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (_FlakyHandler,), {"failing": False})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/", handler
    server.shutdown()
    server.server_close()


# -- losing rows -----------------------------------------------------------------------------
def test_resume_after_read_failure_keeps_the_rest_of_the_file(tmp_path, model, flaky_http):
    """A 300-row file over HTTP and a 400-row local file; the driver killed after a few
    commits; on the rerun the server answers 500. Before: the rerun published 440 rows, no
    error record, exit 0 (260 rows gone). Now: a read error covers the unread rows, the
    summary counts them (rows + errors = 700), and retry-errors gets every row back."""
    root, url, handler = flaky_http
    ids = write_jsonl_corpus(root, {"remote.jsonl": 300})
    ids += write_jsonl_corpus(tmp_path / "local", {"local.jsonl": 400}, start=300)
    spec = job(tmp_path, model, [url + "remote.jsonl", tmp_path / "local" / "local.jsonl"])
    out = tmp_path / "out"
    env = {"PIPELINE_FAULT": "commit-record:3", "PIPELINE_FAKE_READ_AHEAD": "1"}
    assert run_fake("run", str(spec), env=env, check=False).returncode == 86
    handler.failing = True
    p = run_fake("run", str(spec))
    s = summary(out)
    assert s["rows"] == 700, s  # every input row: a result, or stood for by the read error
    for task in TASKS:
        assert s["tasks"][task]["ok"] + s["tasks"][task]["error"] == 700
    errors = read_dataset(str(out), "errors")
    read_errors = errors.filter(pc.equal(errors["error_kind"], "read_error")).to_pylist()
    assert {r["task"] for r in read_errors} == set(TASKS) and all(r["covers_to"] == -1 for r in read_errors)
    unread = 700 - len(task_ids(out, "sentiment")) + 1
    assert s["error_kinds"]["read_error"] == unread * len(TASKS) and unread > 1
    assert "Traceback" not in p.stderr
    handler.failing = False
    run_fake("retry-errors", str(spec), "--kinds", "read_error")
    assert_exactly_once(out, ids)
    assert not read_dataset(str(out), "errors").num_rows


def test_rerun_with_only_the_unreadable_file_left_exits_cleanly(tmp_path, model, flaky_http):
    """When no other file has rows left, the rerun used to die with KeyError: 'rows'."""
    root, url, handler = flaky_http
    write_jsonl_corpus(root, {"remote.jsonl": 120})
    spec = job(tmp_path, model, [url + "remote.jsonl"])
    assert run_fake("run", str(spec), env={"PIPELINE_FAULT": "commit-record:1"}, check=False).returncode == 86
    handler.failing = True
    p = run_fake("run", str(spec))
    assert "Traceback" not in p.stderr and "KeyError" not in p.stderr
    s = summary(tmp_path / "out")
    assert s["read_errors_of_unknown_extent"] == 1  # never read to its end: "the rest", size unknown
    assert "could not be read to their end" in p.stdout


def test_read_error_retry_refuses_a_changed_file(tmp_path, model):
    """A read error stands for rows from position p on; if the file changed since, p is
    another record: retry-errors refuses, and an incremental run replaces the file whole."""
    import gzip

    write_jsonl_corpus(tmp_path / "plain", {"b.jsonl": 30})
    data = (tmp_path / "plain" / "b.jsonl").read_bytes()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    gz = corpus / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(data)[:-30])  # truncated gzip: the stream breaks near its end
    spec = job(tmp_path, model, [gz])
    out = tmp_path / "out"
    run_fake("run", str(spec))
    errors = read_dataset(str(out), "errors")
    assert set(errors["error_kind"].to_pylist()) == {"read_error"}
    gz.write_bytes(gzip.compress(data))  # repaired (new size and mtime)
    p = run_fake("retry-errors", str(spec), "--kinds", "read_error", check=False)
    assert p.returncode == ExitStatus.FAILED and "changed since its rows were published" in error_line(p)
    run_fake("run", str(spec), "--incremental")
    assert len(task_ids(out, "sentiment")) == 30 and not read_dataset(str(out), "errors").num_rows


# -- duplicating rows ------------------------------------------------------------------------
def test_incremental_run_replaces_a_changed_file(tmp_path, model):
    """A 20-row file, an incremental run, the file grown to 25 rows, a second run: the
    output held 45 rows (25 unique). Now the new rows replace the old in one switch."""
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, {"a.jsonl": 20})
    write_jsonl_corpus(tmp_path / "other", {"b.jsonl": 7}, start=500)
    spec = job(tmp_path, model, [corpus, tmp_path / "other"], incremental=True)
    out = tmp_path / "out"
    run_fake("run", str(spec))
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 25})
    run_fake("run", str(spec))
    got = task_ids(out, "sentiment")
    assert len(got) == 32 and len(set(got)) == 32 and set(ids) <= set(got)
    os.utime(corpus / "a.jsonl", (time.time() + 5, time.time() + 5))  # touched: new fingerprint, same rows
    run_fake("run", str(spec))
    assert sorted(task_ids(out, "summarization")) == sorted(got)
    m = read_manifest(Store(str(out)))
    assert len(m.sources) == 2 and len(m.runs) == 2  # the first run still holds b.jsonl


@pytest.mark.parametrize("policy", ["error", "fail"])
def test_duplicate_ids(tmp_path, model, policy):
    """`1` and "1" both become the id "1": position-based checks let both through."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [{"id": 1, "text": "first"}, {"id": "2", "text": "second"}, {"id": "1", "text": "again"},
            {"id": 3, "text": "third"}]
    (corpus / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_jsonl_corpus(corpus, {"b.jsonl": 50})
    (corpus / "c.jsonl").write_text(json.dumps({"id": 2, "text": "in another file"}) + "\n")
    spec = job(tmp_path, model, [corpus], input={"duplicate_ids": policy})
    out = tmp_path / "out"
    p = run_fake("run", str(spec), check=False)
    if policy == "fail":
        line = error_line(p)
        assert p.returncode == ExitStatus.FAILED and "repeat an id" in line and "nothing was published" in line
        assert read_manifest(Store(str(out))) is None
        return
    assert p.returncode == 0, p.stderr
    for task in TASKS:
        ok = read_dataset(str(out), task)
        assert len(ok["row_id"].to_pylist()) == len(set(ok["row_id"].to_pylist())) == 53
        first = ok.filter(pc.equal(ok["row_id"], "1")).to_pylist()
        assert first[0]["position"] == 0  # the first occurrence wins
    errors = read_dataset(str(out), "errors").to_pylist()
    assert sorted((e["row_id"], e["position"]) for e in errors if e["task"] == "sentiment") == [("1", 2), ("2", 0)]
    assert {e["error_kind"] for e in errors} == {"duplicate_id"}
    assert summary(out)["error_kinds"] == {"duplicate_id": 4}


def _lease_of_another_host(out, heartbeat_age: float) -> None:
    now = time.time()
    info = LeaseInfo(owner="abc123", token="t", host="elsewhere", pid=1, started_at=now - 100,
                     heartbeat_at=now - heartbeat_age, ttl_s=60)
    Store(str(out)).write_json("_lease.json", info.model_dump())


def test_second_writer_is_told_busy_or_waits(tmp_path, model):
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 60})
    out = tmp_path / "out"
    spec = job(tmp_path, model, [corpus])
    first = start_fake("run", str(spec), log=tmp_path / "first.log", env={"PIPELINE_FAKE_DELAY": "0.4"})
    try:
        deadline = time.monotonic() + 30
        while not (out / "_lease.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        p = run_fake("run", str(spec), check=False)
        assert p.returncode == ExitStatus.BUSY, p.stderr
        line = error_line(p)
        assert line.startswith("error: output busy: run ") and " since " in line, line
        p = run_fake("run", str(spec), "--wait")  # waits for the first, then finds it published
        assert "up-to-date" in p.stdout
        assert first.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert_exactly_once(out, ids)


def test_a_dead_drivers_lease_is_taken_over(tmp_path, model):
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 50})
    out = tmp_path / "out"
    spec = job(tmp_path, model, [corpus])
    # A driver on this host killed while holding the lease: its process is gone, taken over at once.
    assert run_fake("run", str(spec), env={"PIPELINE_FAULT": "commit-record:2"}, check=False).returncode == 86
    assert not json.loads((out / "_lease.json").read_text())["released"]
    run_fake("run", str(spec))
    assert_exactly_once(out, ids)
    # A driver on another host: busy while its heartbeat is fresh, taken over once it expired.
    _lease_of_another_host(out, heartbeat_age=5)
    p = run_fake("run", str(spec), "--force", check=False)
    assert p.returncode == ExitStatus.BUSY and "host elsewhere" in p.stderr
    _lease_of_another_host(out, heartbeat_age=600)
    p = run_fake("run", str(spec), "--force")
    assert "took over the output lease" in p.stderr
    assert_exactly_once(out, ids)


# -- getting stuck ---------------------------------------------------------------------------
def test_resume_with_non_contiguous_parts_and_other_batch_sizes(tmp_path, model):
    """rows_per_unit > batch_rows and batches in flight: batch k+1 commits before batch k;
    killed; the rerun's batches span the gaps. Before: CommitError (overlap) on every
    rerun. Now coverage counts positions: it resumes, with any batch size."""
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 200, "b.jsonl": 90})
    spec = job(tmp_path, model, [corpus], output={"rows_per_unit": 100}, engine={"batch_rows": 8, "batches_in_flight": 4})
    out = tmp_path / "out"
    env = {"PIPELINE_FAULT": "commit-record:9", "PIPELINE_FAKE_SEED": "3"}
    assert run_fake("run", str(spec), env=env, check=False).returncode == 86
    records = [json.loads(f.read_text()) for f in out.glob("_staging/*/_commits/*.json")]
    done = sum(r["rows"] for r in records)
    ranges = sorted((r["source"], *rng) for rec in records for rng in [rec["positions"][0]] for r in [rec])
    assert any(a[0] == b[0] and b[1] > a[2] + 1 for a, b in zip(ranges, ranges[1:])), "no gap: pick another seed"
    run_fake("run", str(spec), "--batch-rows", "13", env={"PIPELINE_FAKE_SEED": "5"})
    assert_exactly_once(out, ids)
    s = summary(out)
    assert s["rows_resumed"] == done and s["rows_computed"] == 290 - done


# -- telling the truth -----------------------------------------------------------------------
def test_commit_error_is_one_line(tmp_path, model):
    """A commit record that does not add up (written by something else than this run):
    the publish refuses, in one line, with exit status 1."""
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, {"a.jsonl": 60})
    spec = job(tmp_path, model, [corpus], output={"rows_per_unit": 20})
    out = tmp_path / "out"
    assert run_fake("run", str(spec), env={"PIPELINE_FAULT": "publish-plan:0"}, check=False).returncode == 86
    record = sorted(out.glob("_staging/*/_commits/*.json"))[0]
    data = json.loads(record.read_text())
    data["rows"] += 1
    record.write_text(json.dumps(data))
    p = run_fake("run", str(spec), check=False)
    assert p.returncode == ExitStatus.FAILED
    assert "nothing was published" in error_line(p)
    assert read_manifest(Store(str(out))) is None


def test_a_writer_whose_lease_was_taken_publishes_nothing(tmp_path, model):
    """A driver cut off long enough for its lease to expire (here: the lease overwritten by
    another writer mid-run) must not publish when it comes back: the zombie's run fails."""
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, {"a.jsonl": 40})
    out = tmp_path / "out"
    spec = job(tmp_path, model, [corpus])
    zombie = start_fake("run", str(spec), log=tmp_path / "zombie.log", env={"PIPELINE_FAKE_DELAY": "0.3"})
    try:
        deadline = time.monotonic() + 30
        while not list(out.glob("_staging/*/_commits/*.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        _lease_of_another_host(out, heartbeat_age=0)  # the new holder
        assert zombie.wait(timeout=60) == ExitStatus.FAILED
    finally:
        if zombie.poll() is None:
            zombie.kill()
    assert "lost its lease" in (tmp_path / "zombie.log").read_text()
    assert read_manifest(Store(str(out))) is None


def test_gc_verb_removes_what_no_version_needs(tmp_path, model):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, {"a.jsonl": 30})
    out = tmp_path / "out"
    spec = job(tmp_path, model, [corpus])
    run_fake("run", str(spec))
    first = read_manifest(Store(str(out))).files()
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 33})  # changed: the next run replaces version 1
    assert run_fake("run", str(spec), "--batch-rows", "7", env={"PIPELINE_FAULT": "commit-record:1"},
                    check=False).returncode == 86
    run_fake("run", str(spec), "--rows-per-unit", "11", env={"PIPELINE_FAULT": "commit-record:0"}, check=False)
    run_fake("run", str(spec))  # publishes version 2; version 1's files stay (retention)
    assert all((out / f).exists() for f in first)
    p = run_fake("gc", str(out), "--retention-hours", "0", "--dry-run")
    assert "would remove: " in p.stdout and all((out / f).exists() for f in first)
    p = run_fake("gc", str(out), "--retention-hours", "0")
    assert not any((out / f).exists() for f in first)
    assert "1 abandoned staging folders" in p.stdout  # the --rows-per-unit 11 run (another run id)
    assert_exactly_once(out, ids)
