"""An inference actor whose engine cannot start: the person reads the engine's own reason in
one line, the traceback is in the run's log file; `--verbose` shows everything as it comes.

The model folder is the tiny model with its weights file overwritten by garbage: the engine
core fails while loading it, in its own process (the hardest case: vLLM's exception in the
actor says only "See root cause above").
"""

import shutil

import pytest

from clijob import run_cli

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def broken(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    model = d / "tiny-broken"
    shutil.copytree(tiny_model, model)
    (model / "model.safetensors").write_bytes(b"\xff" * 4096)
    (d / "in.jsonl").write_text('{"text": "a film"}\n{"text": "another film"}\n')
    return d, model


def _args(d, model, out):
    return ["run", "--input", str(d / "in.jsonl"), "--output", str(d / out), "--tasks", "sentiment",
            "--model", str(model), "--max-actor-restarts", "0"]


def test_engine_failure_reads_as_one_line(broken):
    d, model = broken
    p = run_cli(*_args(d, model, "out"), check=False, timeout=600)
    assert p.returncode == 1, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 or all(not l.startswith((" ", "File", "Traceback")) for l in lines), p.stderr
    error = [l for l in lines if l.startswith("error: ")]
    assert len(error) == 1, p.stderr
    msg = error[0]
    # The engine's own reason, whole: not Ray's wrapper, not cut mid-sentence.
    assert "ActorDiedError" not in msg and "creation task" not in msg and "Traceback" not in msg
    assert "vLLM engine failed to start" in msg and str(model) in msg
    assert "See root cause above" not in msg
    assert "safetensor" in msg.lower() or "header" in msg.lower(), msg
    assert "Nothing was published" in msg
    # The details are where the line says.
    log = msg.split("Details: ", 1)[1].strip()
    assert log.startswith(str(d / "out" / "_runs")) and "Traceback" in open(log).read()


def test_verbose_shows_the_libraries(broken):
    d, model = broken
    p = run_cli("-v", *_args(d, model, "out-v"), check=False, timeout=600)
    assert p.returncode == 1
    assert "(MapWorker(MapBatches(InferenceActor)) pid=" in p.stderr  # Ray's forwarded worker lines
    assert "Traceback" in p.stderr
