"""Log routing without a cluster: worker lines, translations, the one-line root cause.

Ray's exceptions are built here as Ray builds them (RayTaskError from the actor's
traceback, ActorDiedError around it); no cluster is needed for that.
"""

import io
import logging
import traceback

import pytest

from pipeline import logs
from pipeline.engine.engine import EngineError


@pytest.fixture
def state(monkeypatch):
    """A fresh routing state, as `logs.setup` makes it, without touching the process's streams."""
    st = logs._State(logs.Terminal(io.StringIO()), verbose=False)
    monkeypatch.setattr(logs, "_state", st)
    return st


def test_our_worker_lines_come_back_as_ours_and_the_rest_stays_off_the_terminal(state, caplog):
    caplog.set_level(logging.DEBUG)
    logs._on_worker_lines({
        "pid": 4472, "actor_name": "MapWorker(MapBatches(InferenceActor))", "is_err": True,
        "lines": [
            f"{logs.WORKER_PREFIX}WARNING\x1fpipeline.engine.engine\x1fkilled 1 orphaned vLLM engine process(es)",
            "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
        ],
    })
    ours = [r for r in caplog.records if r.name == "pipeline.engine.engine"]
    assert [(r.levelno, r.getMessage()) for r in ours] == [(logging.WARNING, "killed 1 orphaned vLLM engine process(es)")]
    theirs = [r for r in caplog.records if r.name == "workers"]
    assert len(theirs) == 1 and "Triton" in theirs[0].getMessage()
    assert theirs[0].terminal is False  # the terminal handler drops it; the file keeps it
    handler = logs._TerminalHandler(state.terminal, everything=False)
    assert handler.filter(ours[0]) and not handler.filter(theirs[0])


def test_setup_worker_marks_lines_the_driver_recognizes(capsys):
    log = logging.getLogger("pipeline")
    before = (list(log.handlers), log.propagate, log.level)
    try:
        logs.setup_worker()
        logs.setup_worker()  # idempotent: one handler
        logging.getLogger("pipeline.batch.actor").info("engine ready in %.1fs", 2.5)
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1
        m = logs._WORKER_LINE.match(err[0])
        assert m and (m["level"], m["name"], m["msg"]) == ("INFO", "pipeline.batch.actor", "engine ready in 2.5s")
    finally:
        log.handlers[:] = before[0]
        log.propagate, log.level = before[1], before[2]


def test_library_lines_that_matter_become_one_line_of_ours_once(state, caplog):
    line = ("Warning: The following resource request cannot be scheduled right now: {'CPU': 4.0}. This is likely "
            "due to all cluster resources being claimed by actors.")
    with caplog.at_level(logging.INFO, logger="pipeline.cluster"):
        first = logs.note_worker_line(line)
        again = logs.note_worker_line(line)
    assert first is not None and "{'CPU': 4.0}" in first and again is None
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.cluster"] == [first]
    assert logs.note_worker_line("INFO 11-22 [loader.py:1] Loading weights took 0.01 seconds") is None


def _actor_died(exc: BaseException):
    """What the driver receives when an inference actor's constructor raised exc."""
    from ray.exceptions import ActorDiedError, RayTaskError

    try:
        raise exc
    except BaseException as e:  # noqa: BLE001
        tb = traceback.format_exc()
        cause = e
    return ActorDiedError(RayTaskError("MapWorker.__init__", tb, cause))


def test_root_cause_of_an_actor_that_failed_to_start_is_the_engine_message(state):
    err = _actor_died(EngineError("vLLM engine failed to start for /m/tiny: Engine core initialization failed: "
                                  "SafetensorError: Error while deserializing header: HeaderTooLarge"))
    assert "creation task" in str(err) and 'File "' in str(err)  # what Ray hands the driver: a traceback
    line = logs.root_cause(err)
    assert line == ("EngineError: vLLM engine failed to start for /m/tiny: Engine core initialization failed: "
                    "SafetensorError: Error while deserializing header: HeaderTooLarge")


def test_root_cause_completed_by_the_engine_core_line_a_worker_printed(state):
    logs.note_worker_line("(EngineCore pid=9) ERROR 11-22 [core.py:1] ValueError: No available memory for the cache blocks.")
    err = _actor_died(EngineError(
        "vLLM engine failed to start for /m: Engine core initialization failed. See root cause above. Failed core proc(s): {}"))
    assert logs.root_cause(err) == ("EngineError: vLLM engine failed to start for /m: Engine core initialization failed: "
                               "ValueError: No available memory for the cache blocks.")


def test_terminal_handler_prints_ours_above_everything_else():
    out = io.StringIO()
    term = logs.Terminal(out)
    h = logs._TerminalHandler(term, everything=False)
    log = logging.getLogger("pipeline.test_logs")
    rec = log.makeRecord(log.name, logging.WARNING, __file__, 1, "raise %s", ("kv_cache_gib",), None)
    other = log.makeRecord("vllm.engine", logging.WARNING, __file__, 1, "noise", (), None)
    for r in (rec, other):
        if h.filter(r):
            h.emit(r)
    text = out.getvalue()
    assert "warning: raise kv_cache_gib" in text and "noise" not in text


def test_the_autoscalers_status_table_stays_out_of_the_run_log_but_its_warnings_do_not(state, caplog):
    caplog.set_level(logging.DEBUG)
    logs._on_worker_lines({"pid": "autoscaler", "is_err": False, "lines": [
        "======== Autoscaler status: 2026-11-23 00:50:31.159029 ========",
        " 1.25/2.0 CPU",
        "2026-11-23 00:50:31,159\tWARNING autoscaler.py:1 -- node type cpu is not schedulable",
    ]})
    got = [r.getMessage() for r in caplog.records if r.name == "workers"]
    assert len(got) == 1 and "not schedulable" in got[0]
