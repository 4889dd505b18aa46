"""End to end through the CLI: a real local Ray cluster, a real vLLM engine on the tiny model.

One corpus of JSONL.gz + CSV + plain text (with a few bad rows), all three tasks, run twice
into two outputs and once more into the first: schemas, row accounting, stable unique ids,
and a rerun that computes nothing.
"""

import csv
import gzip
import json
import os
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from pipeline.io.commit import read_dataset, read_manifest
from pipeline.io.store import Store
from pipeline.tasks import REGISTRY

pytestmark = pytest.mark.engine

TASKS = ("sentiment", "summarization", "translation")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    with gzip.open(d / "reviews.jsonl.gz", "wt", encoding="utf-8") as f:
        for i in range(12):
            f.write(json.dumps({"text": f"Review {i}: the film was {'great' if i % 2 else 'dull'}."}) + "\n")
        f.write("{not json\n")  # malformed line
        f.write(json.dumps({"body": "no text field"}) + "\n")  # missing column
    with open(d / "news.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "topic"])
        for i in range(8):
            w.writerow([f"News item {i}. The council met on Tuesday, and the vote passed.", "local"])
        w.writerow(["", "empty"])  # empty text
    with open(d / "lines.txt", "w", encoding="utf-8") as f:
        for i in range(6):
            f.write(f"Plain line {i}, translated and summarized.\n")
    # 12 + 2 bad in jsonl, 8 + 1 bad in csv, 6 in text
    return {"dir": d, "rows": 29, "bad": 3}


def run_cli(args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    return p


@pytest.fixture(scope="module")
def two_runs(corpus, tiny_model, tmp_path_factory):
    outs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp("out") / name
        d = corpus["dir"]
        run_cli([
            "run", "--input", str(d / "reviews.jsonl.gz"), str(d / "news.csv"), str(d / "lines.txt"),
            "--output", str(out), "--tasks", ",".join(TASKS), "--target-lang", "French",
            "--model", str(tiny_model), "--max-model-len", "1024", "--rows-per-unit", "5", "--batch-rows", "16",
        ])
        outs.append(out)
    return outs


def test_schema_and_row_accounting(two_runs, corpus):
    out = two_runs[0]
    errors = read_dataset(str(out), "errors")
    for task in TASKS:
        t = read_dataset(str(out), task)
        assert t.schema.equals(REGISTRY[task].schema(), check_metadata=False), task
        # Plain pyarrow over the folder works too (no job is publishing now).
        assert pads.dataset(str(out / task)).count_rows() == t.num_rows
        task_errors = errors.filter(pc.equal(errors["task"], task))
        assert t.num_rows + task_errors.num_rows == corpus["rows"], task
        assert task_errors.num_rows == corpus["bad"]
        ids = t["row_id"].to_pylist() + task_errors["row_id"].to_pylist()
        assert len(set(ids)) == corpus["rows"]  # exactly once
        assert all(n > 0 for n in t["prompt_tokens"].to_pylist())
        assert set(t["run_id"].to_pylist()) == {read_manifest(Store(str(out))).runs[0]}
    sentiment = read_dataset(str(out), "sentiment")
    assert set(sentiment["label"].to_pylist()) <= {"positive", "negative", "neutral"}
    assert set(read_dataset(str(out), "translation")["target_lang"].to_pylist()) == {"French"}
    kinds = sorted(set(errors["error_kind"].to_pylist()))
    assert kinds == ["empty_text", "malformed_record", "missing_field"]


def test_ids_stable_across_runs(two_runs):
    a, b = (sorted(read_dataset(str(o), "summarization")["row_id"].to_pylist()) for o in two_runs)
    assert a == b and len(a) == len(set(a))
    assert any(i.endswith("lines.txt#0") for i in a)


def test_summary_json(two_runs, corpus):
    s = json.loads((two_runs[0] / "summary.json").read_text())
    assert s["status"] == "published" and s["rows"] == corpus["rows"] == s["rows_computed"]
    assert s["tasks"]["sentiment"] == {"ok": corpus["rows"] - corpus["bad"], "error": corpus["bad"], "truncated": 0}
    # Answers cut at max_tokens are ok rows, flagged and counted apart (the tiny model rambles).
    for task in TASKS:
        flagged = pc.sum(read_dataset(str(two_runs[0]), task)["output_truncated"]).as_py() or 0
        assert s["tasks"][task]["truncated"] == flagged, task
    assert s["output_tokens"] > 0 and s["output_tokens_per_second"] > 0
    # Start-up apart from throughput, and where it went: the parts add up to the whole.
    b = s["startup_breakdown"]
    assert 0 < s["engine_load_seconds"] < s["startup_seconds"] < s["wall_seconds"]
    assert sum(b.values()) == pytest.approx(s["startup_seconds"], abs=0.01)
    assert s["steady_seconds"] > 0 and s["output_tokens_per_second_after_startup"] > s["output_tokens_per_second"]
    # Three tasks share each row's text, and every prompt starts with the same template
    # header: with 32-token blocks the engine serves some prompt tokens from its cache.
    assert 0 < s["prefix_cache_hit_rate"] < 1
    assert s["actor_generate_seconds"] > 0 and s["actor_prepare_seconds"] > 0
    # Prefill counts: prompt + output tokens/s, and the model FLOP utilization (or why none).
    assert s["tokens_per_second_after_startup"] > s["output_tokens_per_second_after_startup"]
    u = s["flop_utilization"]
    assert u["gflops_per_second"] > 0 and "Kaplan" in u["basis"]
    assert (u.get("mfu") is None) == (u.get("peak_gflops") is None) == ("note" in u)
    if u.get("mfu") is not None:
        assert u["mfu"] == pytest.approx(u["gflops_per_second"] / u["peak_gflops"], abs=1e-4)  # both rounded


def test_one_ray_cpu_actor_computes_on_every_core(two_runs):
    """The actor asks Ray for one logical CPU, and Ray sets OMP_NUM_THREADS=1 in it; the
    engine's worker must still get one compute thread per core (pipeline/engine/cpus.py)."""
    from pipeline.engine.cpus import CpuTopology, plan_engines

    s = json.loads((two_runs[0] / "summary.json").read_text())
    (slot,) = plan_engines(CpuTopology.detect())  # one NUMA node here: one engine
    (engine,) = s["engines"]
    assert engine["device"] == "cpu" and engine["cpu_bind"] == slot.bind
    assert engine["compute_threads"] == len(slot.compute) > 1 or CpuTopology.detect().physical_cores == 1


def test_rerun_of_finished_job_computes_nothing(two_runs, corpus, tiny_model):
    out = two_runs[0]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    d = corpus["dir"]
    p = run_cli([
        "run", "--input", str(d / "reviews.jsonl.gz"), str(d / "news.csv"), str(d / "lines.txt"),
        "--output", str(out), "--tasks", ",".join(TASKS), "--target-lang", "French",
        "--model", str(tiny_model), "--max-model-len", "1024", "--rows-per-unit", "5", "--batch-rows", "16",
    ])
    assert "up-to-date" in p.stdout and "computed now: 0" in p.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
