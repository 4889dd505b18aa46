"""`pipeline submit/status/logs/stop` against a real Ray head started here (`ray start --head`
on loopback, its own ports, temp dir and token), running real jobs on the tiny model.

One head for the module; each test drives the CLI in a subprocess as a user would.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.io.commit import read_dataset
from rayhead import start_ray_head

sys.path.insert(0, str(Path(__file__).parents[1] / "batch"))  # the batch tests' CLI helpers
from clijob import committed_rows, wait_for, write_jsonl_corpus, write_spec  # noqa: E402

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def head():
    h = start_ray_head(num_cpus=2)
    try:
        yield h
    finally:
        h.stop()


def cli(head, *args, timeout: float = 600, env_drop: tuple = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in head.client_env().items() if k not in env_drop}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def job_spec(tmp_path, tiny_model, inputs, out, **extra):
    return write_spec(
        tmp_path / "nightly.yaml",
        input={"paths": [str(p) for p in inputs], "id_field": "id"},
        output={"path": str(out), "rows_per_unit": 40},
        tasks={"summarization": {"max_words": 5, "ends_at": "line", "sampling": {"ignore_eos": True, "max_tokens": 24}}},
        model={"path": str(tiny_model)},
        engine={"max_model_len": 512, "batch_rows": 16},
        **extra,
    )


class GatedFiles(http.server.SimpleHTTPRequestHandler):
    """Serves files, but holds every GET of a body until the test opens the gate (HEAD, which
    the planner uses for fingerprints, answers at once): a job reading such a file cannot
    finish, however fast the model is, so it is certainly stopped half way."""

    gate = threading.Event()

    def do_GET(self):
        self.gate.wait(timeout=600)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def gated_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    GatedFiles.gate.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(GatedFiles, directory=str(root)))
    server.daemon_threads = True
    # the stopped job's held GET is answered into a closed socket once the gate opens: expected
    server.handle_error = lambda request, client_address: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        GatedFiles.gate.set()
        server.shutdown()
        server.server_close()


def test_stopped_job_resubmitted_finishes_with_every_row_once(head, tmp_path, tiny_model, gated_server):
    ids = write_jsonl_corpus(tmp_path / "corpus", {f"p{i}.jsonl": 80 for i in range(3)})
    served, url = gated_server
    ids += write_jsonl_corpus(served, {"late.jsonl": 80}, start=len(ids))
    out = tmp_path / "out"
    spec = job_spec(tmp_path, tiny_model, [tmp_path / "corpus", url + "late.jsonl"], out)

    first = cli(head, "submit", str(spec), "--address", head.dashboard_url)
    assert first.returncode == 0, first.stderr
    job1 = first.stdout.split()[0]
    assert job1.startswith("pipeline-nightly-") and job1.endswith("-1")

    # A doubled submit while it runs starts nothing: one clear line, exit BUSY (3).
    twin = cli(head, "submit", str(spec), "--address", head.dashboard_url)
    assert twin.returncode == 3, twin.stderr
    assert twin.stderr.strip().splitlines()[-1].startswith(f"error: already submitted as {job1}: status ")
    assert "Traceback" not in twin.stderr

    # The local files get done; the served one waits at the gate, so the job is mid-run.
    wait_for(lambda: committed_rows(out) >= 240, 300, "the local files' rows committed")
    status = cli(head, "status", job1, "--address", head.dashboard_url)
    assert status.returncode == 0 and f"{job1}: RUNNING" in status.stdout, status.stdout + status.stderr
    stopped = cli(head, "stop", job1, "--address", head.dashboard_url)
    assert stopped.returncode == 0 and f"{job1}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    at_stop = committed_rows(out)
    assert at_stop == 240
    assert not (out / "_manifest.json").exists()  # a stopped job publishes nothing
    logs = cli(head, "logs", job1, "--address", head.dashboard_url)
    assert logs.returncode == 0 and "rows" in logs.stdout  # the run's progress lines

    # The resubmit is attempt 2 of the same job and resumes from the committed parts;
    # --follow streams its log (the run's summary) and exits with its status.
    GatedFiles.gate.set()
    again = cli(head, "submit", str(spec), "--address", head.dashboard_url, "--follow")
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    job2 = again.stdout.split()[0]
    assert job2 == job1[:-1] + "2"
    assert f"{job1} STOPPED" in again.stderr and f"{job2}: SUCCEEDED" in again.stdout
    assert "resumed:" in again.stdout  # the summary printed by `pipeline run` on the cluster

    got = read_dataset(str(out), "summarization")["row_id"].to_pylist()
    errors = read_dataset(str(out), "errors")["row_id"].to_pylist()
    assert sorted(got + errors) == sorted(ids)  # exactly N unique rows: none lost, none twice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(ids)
    assert summary["rows_resumed"] == at_stop and summary["rows_computed"] == len(ids) - at_stop


def test_twin_submits_at_once_start_one_job_and_a_failed_job_is_one_line(head, tmp_path):
    """Two submits of one spec at the same moment: one job starts, the other submit says
    which job it is (exit 3). The job fails fast (its model is missing on the cluster):
    `--wait` exits 1 with the reason on one line."""
    write_jsonl_corpus(tmp_path / "corpus", {"a.jsonl": 3})
    spec = job_spec(tmp_path, tmp_path / "no-such-model", [tmp_path / "corpus"], tmp_path / "out")
    env = head.client_env()
    twins = [subprocess.Popen([sys.executable, "-m", "pipeline", "submit", str(spec), "--address", head.dashboard_url,
                               "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = sorted((p.wait(timeout=300), *p.communicate()) for p in twins)
    (code1, out1, err1), (code3, out3, err3) = results
    assert (code1, code3) == (1, 3), results
    job = out1.split()[0]
    busy = err3.strip().splitlines()[-1]
    assert busy.startswith(f"error: already submitted as {job}: status "), err3
    assert "Traceback" not in err1 + err3
    last = err1.strip().splitlines()[-1]
    assert last.startswith(f"error: job {job} FAILED") and "does not exist" in last, last


def test_cli_errors_are_one_line(head, tmp_path):
    p = cli(head, "status", "pipeline-no-such-job-1", "--address", head.dashboard_url)
    assert p.returncode == 2 and p.stderr.strip() == "error: no job pipeline-no-such-job-1 on this cluster (`ray job list` shows them)"

    # The head wants a token; a wrong one is refused with one line (never a traceback).
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token")
    p = subprocess.run([sys.executable, "-m", "pipeline", "status", "x", "--address", head.dashboard_url],
                       capture_output=True, text=True, env={**head.client_env(), "RAY_AUTH_TOKEN_PATH": str(bad)})
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "refused our token" in p.stderr, p.stderr

    # An explicit --address wins over RAY_ADDRESS (Ray's client would let the variable win).
    p = subprocess.run([sys.executable, "-m", "pipeline", "status", "pipeline-no-such-job-1", "--address",
                        head.dashboard_url], capture_output=True, text=True,
                       env={**head.client_env(), "RAY_ADDRESS": "http://127.0.0.1:9"})
    assert p.returncode == 2 and "no job" in p.stderr, p.stderr
    # ... and the variable is the default, like Ray's CLI.
    p = subprocess.run([sys.executable, "-m", "pipeline", "status", "pipeline-no-such-job-1"],
                       capture_output=True, text=True, env={**head.client_env(), "RAY_ADDRESS": head.dashboard_url})
    assert p.returncode == 2 and "no job" in p.stderr, p.stderr
