"""`pipeline schedule`: the rendered entries, and the rendered commands run for real (tiny
model): twice with new files in between, and twice at once."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.io.commit import read_dataset

sys.path.insert(0, str(Path(__file__).parents[1] / "batch"))  # the batch tests' CLI helpers
from clijob import write_jsonl_corpus, write_spec  # noqa: E402


def pipeline_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def make_spec(tmp_path, model="/models/m", schedule="0 2 * * 1-5", corpus=None, out=None, name="nightly.yaml"):
    return write_spec(
        tmp_path / name,
        input={"paths": [str(corpus or tmp_path / "corpus")], "id_field": "id"},
        output={"path": str(out or tmp_path / "out"), "rows_per_unit": 20},
        tasks={"sentiment": {}},
        model={"path": str(model)},
        engine={"max_model_len": 512, "batch_rows": 16},
        schedule=schedule,
    )


def crontab_command(text: str) -> str:
    """The command of the rendered crontab line, as cron hands it to /bin/sh."""
    line = next(ln for ln in text.splitlines() if ln and not ln.startswith("#"))
    fields = line.split(" ", 5)
    return fields[5].replace("\\%", "%")


def systemd_exec_start(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line[len("ExecStart="):].replace("%%", "%"))


def test_crontab_line(tmp_path):
    spec = make_spec(tmp_path)
    p = pipeline_cli("schedule", str(spec), "--lock-dir", str(tmp_path / "locks"), "--log-dir", str(tmp_path / "logs"))
    assert p.returncode == 0, p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
    assert len(line) == 1 and line[0].startswith("0 2 * * 1-5 ")
    cmd = crontab_command(p.stdout)
    assert "flock -n -E 3" in cmd and f"run {spec}" in cmd and cmd.rstrip().endswith("2>&1")
    assert "--incremental" in cmd  # a scheduled run only takes new files


def test_systemd_units_verify(tmp_path):
    import shutil

    spec = make_spec(tmp_path, schedule="0 0 1,15 * sun")
    p = pipeline_cli("schedule", str(spec), "--format", "systemd", "--write", str(tmp_path / "units"),
                     "--lock-dir", str(tmp_path / "locks"))
    assert p.returncode == 0, p.stderr
    service = (tmp_path / "units" / "pipeline-nightly.service").read_text()
    timer = (tmp_path / "units" / "pipeline-nightly.timer").read_text()
    assert "Type=oneshot" in service and "Persistent=true" in timer
    # cron's day-of-month OR day-of-week: two calendars, the timer fires on either
    assert timer.count("OnCalendar=") == 2
    argv = systemd_exec_start(service)
    assert argv[:4] == [shutil.which("flock") or "/usr/bin/flock", "-n", "-E", "3"]
    if shutil.which("systemd-analyze"):
        v = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "units" / "pipeline-nightly.timer"),
                            str(tmp_path / "units" / "pipeline-nightly.service")], capture_output=True, text=True)
        problems = [ln for ln in v.stderr.splitlines() if "pipeline-nightly" in ln]
        assert not problems, v.stderr


def test_kubernetes_cronjob_validates_against_the_kubernetes_schema(tmp_path):
    kv = pytest.importorskip("kubernetes_validate")
    from pipeline.ops.package import find_checkout

    checkout = find_checkout()
    p = pipeline_cli("schedule", str(checkout / "jobs" / "gpu-cluster.yaml"), "--format", "kubernetes",
                     "--address", "http://raycluster-head-svc.ml.svc.cluster.local:8265", "--image", "r/p:1")
    assert p.returncode == 0, p.stderr
    doc = yaml.safe_load(p.stdout)
    assert kv.validate(doc, "1.33.0", strict=True)
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["schedule"] == "0 2 * * *"
    cmd = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:5] == ["python", "-m", "pipeline", "submit", "jobs/gpu-cluster.yaml"] and "--incremental" in cmd


def test_spec_without_schedule_is_a_usage_error(tmp_path):
    spec = make_spec(tmp_path, schedule=None)
    p = pipeline_cli("schedule", str(spec))
    assert p.returncode == 2 and "has no schedule" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.engine
def test_rendered_commands_twice_at_once_then_again_with_new_files(tmp_path, tiny_model):
    """Two triggers at once (the crontab command and the systemd service, same output): one
    does the work, the other exits BUSY at once. Then new files arrive and the next trigger
    processes only those. The output holds each row exactly once."""
    corpus = tmp_path / "corpus"
    ids = write_jsonl_corpus(corpus, {"day1-a.jsonl": 40, "day1-b.jsonl": 40})
    out = tmp_path / "out"
    spec = make_spec(tmp_path, model=tiny_model, schedule="*/5 * * * *", corpus=corpus, out=out)
    locks = ["--lock-dir", str(tmp_path / "locks"), "--log-dir", str(tmp_path / "logs")]
    cron = pipeline_cli("schedule", str(spec), *locks)
    units = pipeline_cli("schedule", str(spec), "--format", "systemd", "--write", str(tmp_path / "units"), *locks)
    assert cron.returncode == 0 and units.returncode == 0, cron.stderr + units.stderr
    cron_cmd = crontab_command(cron.stdout)
    exec_start = systemd_exec_start((tmp_path / "units" / "pipeline-nightly.service").read_text())
    workdir = next(ln.split("=", 1)[1] for ln in (tmp_path / "units" / "pipeline-nightly.service").read_text().splitlines()
                   if ln.startswith("WorkingDirectory="))

    first = subprocess.Popen(["/bin/sh", "-c", cron_cmd])
    time.sleep(3)  # the first holds the lock by now (it takes a run tens of seconds)
    t = time.monotonic()
    second = subprocess.run(exec_start, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert second.returncode == 3, second.stdout + second.stderr  # BUSY, at once, nothing done
    assert time.monotonic() - t < 10
    assert first.wait(timeout=600) == 0, (tmp_path / "logs" / "pipeline-nightly.log").read_text()[-4000:]
    assert sorted(read_dataset(str(out), "sentiment")["row_id"].to_pylist()) == sorted(ids)

    ids += write_jsonl_corpus(corpus, {"day2.jsonl": 30}, start=len(ids))
    again = subprocess.run(["/bin/sh", "-c", cron_cmd], timeout=600)
    assert again.returncode == 0, (tmp_path / "logs" / "pipeline-nightly.log").read_text()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_files"] == 1 and summary["rows"] == 30  # only the new file
    got = read_dataset(str(out), "sentiment")["row_id"].to_pylist()
    assert len(got) == len(set(got)) and sorted(got) == sorted(ids)  # each row once, none twice
