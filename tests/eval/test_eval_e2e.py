"""`pipeline eval` end to end on the tiny model: two prompt variants compared in one command
(a real local Ray cluster, real vLLM engines through the normal batch path), then the same
variant evaluated alone into the same folder, which finds its run published.

The tiny model's text is gibberish, so the checks are on structure and accounting (every
graded row counted once, metrics present and in range, the JSON and the table agree, the
run summary carries the same figures), plus one value recomputed independently: accuracy
from the published labels joined to the gold column by hand.
"""

import json
import os
import subprocess
import sys

import pytest

from pipeline.io.commit import read_dataset

pytestmark = pytest.mark.engine

ROWS = 12
GRADED = 10  # -n


def write_spec(path, data_file, model, sentiment_system, summary_user):
    path.write_text(f"""
input: {{paths: [{data_file}], text_field: text, id_field: id}}
output: {{path: unused}}
tasks:
  sentiment:
    labels: [positive, negative]
    prompt: {{system: "{sentiment_system}"}}
  summarization:
    max_words: 8
    prompt: {{user: "{summary_user}"}}
    sampling: {{max_tokens: 12}}
model: {{path: {model}}}
engine: {{max_model_len: 512}}
evaluation:
  references: {{sentiment: label, summarization: summary}}
  label_map: {{"1": positive, "0": negative}}
""", encoding="utf-8")


def run_cli(args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    return p


@pytest.fixture(scope="module")
def compared(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    data = d / "labeled.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for i in range(ROWS):
            good = i % 2 == 0
            f.write(json.dumps({
                "id": f"r{i:02d}",
                "text": f"Film {i}. The acting was {'wonderful' if good else 'wooden'}. I {'loved' if good else 'hated'} it.",
                "label": 1 if good else 0,
                "summary": f"A {'good' if good else 'bad'} film.",
            }) + "\n")
    a, b = d / "a.yaml", d / "b.yaml"
    write_spec(a, data, tiny_model, "Classify the review.", "Summarize: {text}")
    write_spec(b, data, tiny_model, "Is this review positive or negative?", "{text}\\nIn short:")
    work, out = d / "work", d / "result.json"
    p = run_cli(["eval", "--compare", str(a), str(b), "-n", str(GRADED), "--output", str(work),
                 "--out", str(out), "--resamples", "200"])
    return {"dir": d, "a": a, "work": work, "result": json.loads(out.read_text()), "stdout": p.stdout, "data": data}


def test_each_variant_is_graded_on_the_same_rows(compared):
    res = compared["result"]
    assert set(res["variants"]) == {"a", "b"}
    run_ids = set()
    for name, v in res["variants"].items():
        assert v["sample"] == {"rows": GRADED, "without_text": 0, "without_reference": 0}
        run_ids.add(v["run"]["run_id"])
        s = v["tasks"]["sentiment"]
        assert s["rows"] == GRADED and s["reference_field"] == "label"
        assert 0 <= s["metrics"]["accuracy"] <= 1 and 0 <= s["metrics"]["macro_f1"] <= 1
        assert s["gold"] == {"positive": GRADED // 2, "negative": GRADED // 2}
        assert sum(map(sum, s["confusion"]["matrix"])) == GRADED
        assert sum(s["predicted"].values()) == GRADED
        assert s["quality"]["outputs"] + s["failed"] == GRADED and "repetitive" not in s["quality"]
        m = v["tasks"]["summarization"]
        assert m["rows"] == GRADED and m["reference_field"] == "summary"
        assert set(m["metrics"]) == {"rouge1", "rouge2", "rougeL"}
        assert all(0 <= x <= 100 for x in m["metrics"].values())
        assert set(m["lead_baseline"]) == {"rouge1", "rouge2", "rougeL"}
        assert m["lead_baseline"]["rouge1"] > 0  # "Film 3." vs "A bad film.": 'film' is shared
        q = m["quality"]
        assert q["outputs"] + m["failed"] == GRADED
        assert {"truncated", "truncated_share", "empty", "repetitive", "repetitive_share", "seq_rep_4"} <= set(q)
    assert len(run_ids) == 2  # different prompts: different runs


def test_accuracy_recomputed_from_the_published_labels(compared):
    gold = {}
    for line in compared["data"].read_text().splitlines()[:GRADED]:
        r = json.loads(line)
        gold[r["id"]] = "positive" if r["label"] == 1 else "negative"
    for name in ("a", "b"):
        t = read_dataset(str(compared["work"] / name / "out"), "sentiment")
        labels = dict(zip(t["row_id"].to_pylist(), t["label"].to_pylist()))
        assert set(labels) <= set(gold)
        right = sum(labels.get(rid) == g for rid, g in gold.items())
        assert compared["result"]["variants"][name]["tasks"]["sentiment"]["metrics"]["accuracy"] == pytest.approx(right / GRADED)


def test_comparison_and_table(compared):
    res, out = compared["result"], compared["stdout"]
    cmp = res["comparison"]
    assert cmp["resamples"] == 200 and cmp["a"].endswith("a.yaml") and cmp["b"].endswith("b.yaml")
    for task, metrics in (("sentiment", {"accuracy", "macro_f1", "truncated", "empty"}),
                          ("summarization", {"rouge1", "rouge2", "rougeL", "truncated", "empty", "repetitive"})):
        t = cmp["tasks"][task]
        assert t["rows"] == GRADED and metrics <= set(t["metrics"])
        for m, d in t["metrics"].items():
            va = res["variants"]["a"]["tasks"][task]
            got_a = va["metrics"].get(m, va["quality"].get(f"{m}_share"))
            if got_a is not None and d["a"] is not None:
                assert d["a"] == pytest.approx(got_a, abs=1e-3), (task, m)
            if d["diff"] is not None:
                assert d["diff"] == pytest.approx(d["b"] - d["a"])
                assert d["ci_low"] <= d["ci_high"]
                assert d["significant"] == (d["ci_low"] > 0 or d["ci_high"] < 0)
    assert "comparison: B - A, paired bootstrap (200 resamples" in out
    for word in ("accuracy", "macro_f1", "rougeL lead-sentence baseline", "confusion", "95% CI", "significant"):
        assert word in out, word


def test_run_summary_carries_the_evaluation(compared):
    from pipeline.eval.report import summary_lines

    s = json.loads((compared["work"] / "a" / "out" / "summary.json").read_text())
    ev = s["evaluation"]
    assert set(ev["quality"]) == {"sentiment", "summarization"}
    assert ev["metrics"]["sentiment"]["metrics"] == compared["result"]["variants"]["a"]["tasks"]["sentiment"]["metrics"]
    lines = "\n".join(summary_lines(ev))
    assert "quality summarization" in lines and "metrics sentiment" in lines and "lead-sentence baseline" in lines


def test_same_variant_alone_into_the_same_folder_computes_nothing(compared):
    p = run_cli(["eval", str(compared["a"]), "-n", str(GRADED), "--output", str(compared["work"]),
                 ])
    assert "up-to-date" in p.stdout
    assert "accuracy" in p.stdout and "comparison" not in p.stdout
