"""Failures mid-run lose nothing and repeat nothing (real Ray, real vLLM on the tiny model).

Each test runs the CLI in a subprocess over the same corpus, kills something at a chosen
point, and checks the published output: exactly the input ids, each once, per task.
"""

import json
import signal

import pytest

from pipeline.io.commit import read_dataset

from clijob import committed_rows, find_processes, kill_group, run_cli, start_cli, wait_for, write_jsonl_corpus, write_spec

pytestmark = pytest.mark.engine

N_FILES, PER_FILE = 4, 80
TASKS = ("sentiment", "summarization")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    ids = write_jsonl_corpus(d, {f"part{i}.jsonl": PER_FILE for i in range(N_FILES)})
    return d, ids


def make_spec(tmp_path, corpus_dir, tiny_model, out):
    return write_spec(
        tmp_path / "job.yaml",
        input={"paths": [str(corpus_dir)], "id_field": "id"},
        output={"path": str(out), "rows_per_unit": 40},
        # 64 tokens per summary: with commit waves and more batches per actor the tiny model
        # once did all 320 rows in 3 s, and a kill "half way" came after the last commit
        tasks={"sentiment": {}, "summarization": {"max_words": 5, "ends_at": "line", "sampling": {"ignore_eos": True, "max_tokens": 64}}},
        model={"path": str(tiny_model)},
        engine={"max_model_len": 512, "batch_rows": 16, "hang_timeout_s": 120},
        resources={"max_actor_restarts": 2},
    )


def assert_exactly_once(out, ids):
    for task in TASKS:
        ok = read_dataset(str(out), task)["row_id"].to_pylist()
        err = read_dataset(str(out), "errors")
        err = [r for r, t in zip(err["row_id"].to_pylist(), err["task"].to_pylist()) if t == task]
        got = ok + err
        assert len(got) == len(ids), f"{task}: {len(got)} rows for {len(ids)} inputs"
        assert sorted(got) == sorted(ids), task


def summary(out):
    return json.loads((out / "summary.json").read_text())


def test_driver_sigkill_midway_then_rerun_resumes(tmp_path, corpus, tiny_model):
    corpus_dir, ids = corpus
    out = tmp_path / "out"
    spec = make_spec(tmp_path, corpus_dir, tiny_model, out)
    proc = start_cli("run", str(spec), log=tmp_path / "run1.log")
    n = len(ids)
    wait_for(lambda: committed_rows(out) >= n // 2, 600, "half the rows committed", proc)
    kill_group(proc)
    done_at_kill = committed_rows(out)
    assert done_at_kill < n, "the run finished before the kill: make the corpus bigger"
    assert not (out / "_manifest.json").exists()  # nothing published by a killed run

    run_cli("run", str(spec))
    s = summary(out)
    assert s["rows"] == n and s["rows_resumed"] == done_at_kill
    assert s["rows_computed"] == n - done_at_kill
    assert s["rows_computed"] <= 0.6 * n  # at least 40% not recomputed (counted, not assumed)
    print(f"\nrecompute fraction after a kill at {done_at_kill}/{n} rows: {s['rows_computed'] / n:.2f}")
    assert_exactly_once(out, ids)


@pytest.mark.parametrize("victim", ["InferenceActor", "EngineCore"])
def test_actor_or_engine_killed_midway_job_finishes_on_its_own(tmp_path, corpus, tiny_model, victim):
    corpus_dir, ids = corpus
    out = tmp_path / "out"
    spec = make_spec(tmp_path, corpus_dir, tiny_model, out)
    proc = start_cli("run", str(spec), log=tmp_path / "run.log")
    try:
        wait_for(lambda: committed_rows(out) >= len(ids) // 4, 600, "a quarter committed", proc)
        # Between a batch's commit and the next, the process may be changing hands (an actor
        # replaced, an engine starting): wait for one to exist rather than sample a single instant.
        victims: list = []

        def found() -> bool:
            victims[:] = find_processes(victim, session=proc.pid)
            return bool(victims)

        try:
            wait_for(found, 60, f"a {victim} process of the run", proc)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{(tmp_path / 'run.log').read_text()[-4000:]}") from None
        for p in victims:
            p.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-5000:]
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "run.log").read_text()
    assert_exactly_once(out, ids)
    if victim == "InferenceActor":  # no engine process of the killed actor lives on, orphaned
        assert not [p for p in find_processes("VLLM::EngineCore") if p.ppid() == 1]
    s = summary(out)
    assert s["rows"] == len(ids)
    if victim == "EngineCore":
        assert "engine died" in log  # detected and the actor replaced, not a silent hang


def test_engine_dying_past_its_restarts_fails_the_run_cleanly(tmp_path, corpus, tiny_model):
    corpus_dir, ids = corpus
    out = tmp_path / "out"
    spec = make_spec(tmp_path, corpus_dir, tiny_model, out)
    proc = start_cli("run", str(spec), "--max-actor-restarts", "0", log=tmp_path / "run.log")
    try:
        wait_for(lambda: committed_rows(out) > 0, 600, "first commit", proc)
        for p in find_processes("EngineCore", session=proc.pid):
            p.send_signal(signal.SIGKILL)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    log = (tmp_path / "run.log").read_text()
    assert code == 1, log[-4000:]
    assert "Nothing was published" in log and "rerunning the same command resumes" in log
    assert not (out / "_manifest.json").exists()
    assert json.loads(next(out.glob("_runs/*.json")).read_text())["status"] == "failed"


def test_hung_engine_is_treated_as_dead(tmp_path, corpus, tiny_model):
    """SIGSTOP freezes the engine process: no error, no progress. The heartbeat watchdog
    (engine.hang_timeout_s) must notice, restart the actor, and the job still finishes."""
    corpus_dir, ids = corpus
    out = tmp_path / "out"
    spec = make_spec(tmp_path, corpus_dir, tiny_model, out)
    proc = start_cli("run", str(spec), "--hang-timeout", "15", log=tmp_path / "run.log")
    frozen = []
    try:
        wait_for(lambda: committed_rows(out) >= len(ids) // 4, 600, "a quarter committed", proc)
        frozen = find_processes("EngineCore", session=proc.pid)
        assert frozen
        for p in frozen:
            p.send_signal(signal.SIGSTOP)
        assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-5000:]
    finally:
        for p in frozen:  # a frozen process ignores everything but SIGKILL
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if proc.poll() is None:
            kill_group(proc)
    assert "engine made no progress" in (tmp_path / "run.log").read_text()
    assert_exactly_once(out, ids)
