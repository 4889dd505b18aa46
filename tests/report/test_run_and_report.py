"""What a person sees, end to end on the tiny model (one run for the whole module):

- the run's terminal, captured through a pseudo-terminal: a progress bar over requests that
  advances before the first part is committed, and nothing but our lines (no traceback, no
  other library's warning); the libraries' output is in the run's log file instead;
- Ray's Prometheus endpoint, scraped while the run is going, serves the run's metrics;
- a model whose context (1,024 tokens) is shorter than any fixed default just works;
- `pipeline report`: tables and an HTML page that headless Chromium renders with every
  section, for a run with errors of several kinds; `pipeline show`: results beside inputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pipeline.report.page import SECTIONS

pytestmark = pytest.mark.engine

ROWS = 1200
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = re.compile(r"requests\s.*?\b(\d[\d,]*)/~?(\d[\d,]*)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain(raw: bytes) -> str:
    return ANSI.sub("", raw.decode("utf-8", "replace")).replace("\r", "\n")


@pytest.fixture(scope="module")
def job(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ux")
    model = d / "tiny-1024"  # a short-context model: the default max_model_len must follow it
    shutil.copytree(tiny_model, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["max_position_embeddings"] = 1024
    (model / "config.json").write_text(json.dumps(cfg))
    with open(d / "reviews.jsonl", "w", encoding="utf-8") as f:
        for i in range(ROWS):
            f.write(json.dumps({"id": f"r{i:05d}", "text": f"Review {i}: the film was {'great' if i % 3 else 'slow'}."}) + "\n")
        f.write("{not json\n")  # malformed_record
        f.write(json.dumps({"id": "no-text", "body": "x"}) + "\n")  # missing_field
        f.write(json.dumps({"id": "empty", "text": ""}) + "\n")  # empty_text
        f.write(json.dumps({"id": "long", "text": " ".join(["word"] * 3000)}) + "\n")  # too_long (reject)
    port = _free_port()
    spec = {
        "input": {"paths": [str(d / "reviews.jsonl")], "id_field": "id"},
        # One unit for the whole file and one big batch in the engine: the first part is
        # committed only when 1,000 rows x 2 tasks are done, long after requests finish.
        "output": {"path": str(d / "out"), "rows_per_unit": 100_000},
        "tasks": {"sentiment": {}, "summarization": {"max_words": 20, "sampling": {"max_tokens": 48}}},
        "model": {"path": str(model)},
        "engine": {"batch_rows": 1000, "batches_in_flight": 1, "context_policy": "reject", "kv_cache_gib": 0.25},
        "resources": {"metrics_export_port": port},
    }
    (d / "job.yaml").write_text(yaml.safe_dump(spec))
    return {"dir": d, "spec": d / "job.yaml", "out": d / "out", "port": port, "rows": ROWS + 4}


def _run_in_pty(args: list[str], out: Path, port: int, timeout: float = 600) -> dict:
    """Run the CLI on a pseudo-terminal (120 columns); collect what it draws, the screen as it
    was when the first part was committed, and metrics scraped while it ran."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm-256color"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True, start_new_session=True)
    os.close(slave)
    raw = bytearray()
    at_first_commit: list[bytes] = []
    scrapes: list[str] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            raw.extend(chunk)

    def watch() -> None:
        while proc.poll() is None:
            if not at_first_commit and any(out.glob("_staging/*/_commits/*.json")):
                at_first_commit.append(bytes(raw))
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if proc.poll() is None and "ray_pipeline_" in body:
                    scrapes.append(body)
            except OSError:
                pass
            time.sleep(0.25)

    threads = [threading.Thread(target=read, daemon=True), threading.Thread(target=watch, daemon=True)]
    for t in threads:
        t.start()
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    threads[1].join(timeout=10)
    threads[0].join(timeout=10)
    os.close(master)
    return {"rc": rc, "raw": bytes(raw), "at_first_commit": at_first_commit[0] if at_first_commit else None,
            "scrapes": scrapes}


@pytest.fixture(scope="module")
def ran(job):
    return _run_in_pty(["run", str(job["spec"])], job["out"], job["port"])


def test_run_succeeds_with_the_models_own_context_limit(ran, job):
    assert ran["rc"] == 0, _plain(ran["raw"])[-4000:]
    s = json.loads((job["out"] / "summary.json").read_text())
    assert s["rows"] == job["rows"]
    ledger = json.loads((job["out"] / "_runs" / f"{s['run_id']}.json").read_text())
    assert ledger["input"]["id_field"] == "id"


def test_bar_advances_before_the_first_commit(ran):
    assert ran["at_first_commit"] is not None, "no part was ever committed"
    before = _plain(ran["at_first_commit"])
    done = [int(m.group(1).replace(",", "")) for m in BAR.finditer(before)]
    assert len(set(done)) >= 3 and max(done) > 0, f"the bar did not move before the first commit:\n{before[-3000:]}"
    assert done == sorted(done)  # never goes back
    assert "loading model on 1 actor: 0 ready" in before  # engine start-up is a phase of its own
    # Per-task counts under the bar, and tokens/s with an ETA once requests finish.
    assert re.search(r"sentiment ok \d[\d,]* failed \d", before) and re.search(r"ETA \d", before)
    everything = _plain(ran["raw"])
    final = [int(m.group(1).replace(",", "")) for m in BAR.finditer(everything)][-1]
    totals = [int(m.group(2).replace(",", "")) for m in BAR.finditer(everything)]
    assert final == totals[-1] == 2 * (ROWS + 4)  # every (row, task) counted, reader errors included


def test_terminal_shows_our_lines_only_and_the_log_file_the_rest(ran, job):
    text = _plain(ran["raw"])
    assert "Traceback" not in text
    for noise in ("core_worker.cc", "Progress bars disabled", "Triton", "NUMA", "Loading safetensors", "(MapWorker",
                  "pid=", "WARNING", "ERROR"):
        assert noise not in text, f"{noise!r} reached the terminal:\n{text[-3000:]}"
    run_id = json.loads((job["out"] / "summary.json").read_text())["run_id"]
    log = job["out"] / "_runs" / run_id / "pipeline.log"
    assert f"log: {log}" in text  # its path, said once
    assert text.count("log: ") == 1
    logged = log.read_text(errors="replace")
    # Routed, not lost: the Ray and vLLM lines are in the file.
    assert "core_worker.cc" in logged and "(MapWorker(MapBatches(InferenceActor)) pid=" in logged
    assert "EngineDeadError" not in logged  # the engine shut down cleanly at the end


METRICS = ("ray_pipeline_requests_total", "ray_pipeline_output_tokens_total", "ray_pipeline_prompt_tokens_total",
           "ray_pipeline_requests_in_flight", "ray_pipeline_queue_depth", "ray_pipeline_kv_cache_usage",
           "ray_pipeline_prefix_cache_hit_rate", "ray_pipeline_output_tokens_per_second", "ray_pipeline_requests_planned")


def _ok_summaries(body: str) -> float:
    m = re.search(r'^ray_pipeline_requests_total\{[^}]*status="ok"[^}]*task="summarization"[^}]*\} (\S+)$', body, re.M)
    return float(m.group(1)) if m else 0.0


def test_metrics_scraped_while_running(ran):
    scrapes = ran["scrapes"]
    assert scrapes, "the metrics endpoint never served the run's metrics while it ran"
    # Caught mid-run: some summaries done, not all.
    assert any(0 < _ok_summaries(b) < ROWS for b in scrapes), [_ok_summaries(b) for b in scrapes]
    missing = [n for n in METRICS if not any(re.search(rf"^{n}\{{", b, re.M) for b in scrapes)]
    assert not missing, f"never served while running: {missing}"
    assert any(re.search(r'^ray_pipeline_kv_cache_usage\{[^}]*engine="[0-9a-f]{8}"', b, re.M) for b in scrapes)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (make test installs it: apt-get install -y chromium)")
    return path


def _chromium_args(profile: Path) -> list[str]:
    # No sandbox as root; no network at all (this machine has none but the package registries).
    return ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}"]


def test_report_page_renders_every_section(ran, job, tmp_path):
    assert ran["rc"] == 0
    p = subprocess.run([sys.executable, "-m", "pipeline", "report", str(job["out"])], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    run_id = json.loads((job["out"] / "summary.json").read_text())["run_id"]
    page = job["out"] / "_runs" / run_id / "report.html"
    assert f"report: {page}" in p.stdout
    # The terminal tables: tasks and every error kind of the corpus.
    for word in ("sentiment", "summarization", "malformed_record", "missing_field", "empty_text", "too_long"):
        assert word in p.stdout, word
    html = page.read_text()
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:|url\(\s*["']?https?:""", html)

    chromium = _chromium()
    dom = subprocess.run([chromium, *_chromium_args(tmp_path / "p1"), "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    for sid, heading in SECTIONS:
        section = re.search(rf'<section id="{sid}">(.*?)</section>', rendered, re.S)
        assert section and f"<h2>{heading}</h2>" in section.group(1), sid
        if sid not in ("overview", "tasks"):
            assert "<svg" in section.group(1), f"section {sid} has no chart"
    errors = re.search(r'<section id="errors">(.*?)</section>', rendered, re.S).group(1)
    for kind in ("malformed_record", "missing_field", "empty_text", "too_long"):
        assert f"<td>{kind}</td>" in errors, kind
    assert "prompt is" in errors  # an example message of too_long

    shot = tmp_path / "report.png"
    r = subprocess.run([chromium, *_chromium_args(tmp_path / "p2"), f"--screenshot={shot}", "--window-size=1100,3000",
                        "--hide-scrollbars", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    _check_screenshot(shot)
    keep = os.environ.get("PIPELINE_REPORT_SCREENSHOT")  # to look at it: set a path
    if keep:
        shutil.copy(shot, keep)


def _check_screenshot(path: Path) -> None:
    """The page painted: many distinct colours (charts), not a blank or error page."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    w, h = img.size
    assert (w, h) == (1100, 3000)
    colours = img.resize((275, 750)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50
    # Chart colours of the page's palette are on screen (blue bars and lines).
    assert any(abs(r - 0x3B) < 12 and abs(g - 0x6F) < 12 and abs(b - 0xB6) < 12 for _, (r, g, b) in colours)


def test_show_puts_results_beside_their_input(ran, job):
    p = subprocess.run([sys.executable, "-m", "pipeline", "show", str(job["out"]), "--task", "sentiment", "-n", "3"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "160"})
    assert p.returncode == 0, p.stderr
    for i in range(3):  # the first rows by position, with their text and a label
        row = re.search(rf"r0000{i}\s*│\s*Review {i}: the film was (great|slow)\.\s*│\s*(positive|negative|neutral)", p.stdout)
        assert row, p.stdout
