"""Progress figures without a cluster: the counter actor's class used as a plain object, the
reporter fed snapshots. (The live path through Ray is tested end to end in
tests/report/test_run_and_report.py.)"""

import dataclasses

import pytest

from pipeline.batch.progress import ProgressCounter, ProgressReporter, Tally


def counter(**kw):
    return ProgressCounter(run_id="r", tasks=["sentiment", "summarization"], actors=2, export_metrics=False, **kw)


def test_planned_requests_estimated_from_bytes_until_every_file_is_read():
    c = counter(files=2, total_bytes=1000)
    assert c.snapshot().planned is None
    c.read(rows=10, nbytes=250, requests=20)
    s = c.snapshot()
    assert (s.planned, s.planned_exact) == (80, False)  # 20 requests per 250 of 1,000 bytes
    c.file_read()
    c.read(rows=5, nbytes=100, requests=10)
    c.file_read()
    s = c.snapshot()
    assert (s.planned, s.planned_exact) == (30, True)


def test_phases_and_per_task_counts():
    c = counter(files=1)
    assert c.snapshot().phase == "starting"
    c.engine_loading("e1")
    c.engine_loading("e2")
    s = c.snapshot()
    assert (s.phase, s.engines_loading, s.engines_ready) == ("loading", 2, 0)
    c.engine_ready("e1", 20.0, 100.0, 80.0)
    t = Tally()
    t.add("sentiment", True, 30, 2)
    t.add("sentiment", False)
    t.add("summarization", True, 40, 48, truncated=True)
    c.finished("e1", t.take(), {"in_flight": 5.0, "num_requests_waiting": 3.0, "kv_cache_usage_perc": 0.25})
    assert t.take() == {}  # taken once
    s = c.snapshot()
    assert s.phase == "running" and s.engines_ready == 1 and s.done == 3
    assert s.ok == {"sentiment": 1, "summarization": 1} and s.failed == {"sentiment": 1}
    assert (s.prompt_tokens, s.output_tokens, s.truncated) == (70, 50, {"summarization": 1})
    assert (s.in_flight, s.waiting, s.kv_cache_usage) == (5, 3, 0.25)


def test_rates_and_eta_start_at_the_first_finished_requests():
    rep = ProgressReporter(counter=None, interactive=False)
    base = counter(files=1).snapshot()
    base.files_read, base.requests_read = 1, 1000

    def at(t, done, out):
        return dataclasses.replace(base, t=t, ok={"sentiment": done}, output_tokens=out)

    for t in (100.0, 150.0, 200.0):  # start-up: a minute and a half with nothing finished
        assert rep.rates(at(t, 0, 0)).eta_s is None
    r = rep.rates(at(210.0, 100, 5000))
    assert r.requests_per_s == pytest.approx(10.0)  # 100 requests in the 10 s since the last idle sample
    assert r.tokens_per_s == pytest.approx(500.0)
    assert r.eta_s == pytest.approx(90.0)  # 900 left at 10/s
    assert "ETA 1m30s" in rep.line(at(210.0, 100, 5000), r)


def test_eta_holds_steady_when_requests_finish_a_batch_at_a_time():
    rep = ProgressReporter(counter=None, interactive=False)
    base = counter(files=1).snapshot()
    base.files_read, base.requests_read = 1, 1000
    rep.rates(dataclasses.replace(base, t=0.0))
    eta_err, window_err = [], []
    for t in range(1, 200):  # 100 requests finish together every 20 s: 5 per second on average
        done = 100 * (t // 20)
        r = rep.rates(dataclasses.replace(base, t=float(t), ok={"sentiment": done}))
        truth = (1000 - done) / 5.0
        if t >= 100 and truth:
            eta_err.append(abs(r.eta_s - truth) / truth)
            window_err.append(abs((1000 - done) / r.requests_per_s - truth) / truth)
    # the 30 s pace holds one burst or two (an ETA off by half); the pace since the first
    # finished requests is off by less than the last burst's share of the work done
    assert max(window_err) >= 0.45
    assert max(eta_err) < 0.25


def test_engines_are_asked_to_stop_once_every_row_is_committed(monkeypatch):
    c = counter(files=1)
    c.engine_ready("e1", 1.0, 0.0, 0.0)
    c.engine_ready("e2", 1.0, 0.0, 0.0)
    assert c.finished("e1", {}) is False and c.finished("e2", {}) is False
    c.read(rows=10, nbytes=100, requests=20)
    c.record({"rows": 10})
    assert not c.all_committed()  # the file is not read to its end yet
    c.file_read()
    assert c.all_committed()
    c.request_stop()
    assert c.finished("e1", {}) is True  # the actors hear it on their next report
    assert c.engines_running() == 2
    c.engine_gone("e1")
    assert c.engines_running() == 1
    import pipeline.batch.progress as progress

    later = progress.time.time() + 60
    monkeypatch.setattr(progress.time, "time", lambda: later)
    assert c.engines_running() == 0  # e2's actor went silent: not waited for


def test_missing_engines_are_noted_while_work_remains_only():
    rep = ProgressReporter(counter=None, interactive=False)
    base = counter(files=1).snapshot()
    base.files_read, base.requests_read, base.engines_ready = 1, 10, 1  # 1 of the 2 actors' engines up
    r = rep.rates(base)
    assert "1 of 2 engines ready" in rep.line(dataclasses.replace(base, ok={"sentiment": 4}), r)
    # Every request finished: the engines stop on purpose at the end of a run.
    assert "engines ready" not in rep.line(dataclasses.replace(base, ok={"sentiment": 10}, engines_ready=0), r)
