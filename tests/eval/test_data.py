"""Gold columns read through the project's readers line up with the row ids a run gives."""

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import InputConfig, JobSpec
from pipeline.eval.data import read_columns
from pipeline.eval.run import eval_spec, write_sample
from pipeline.io.readers import read_units
from pipeline.io.sources import list_sources


def test_jsonl_gold_labels_numbers_and_bad_rows(tmp_path):
    p = tmp_path / "labeled.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "great film", "label": 1}) + "\n")
        f.write("\n")  # blank line: no record, but a position
        f.write(json.dumps({"text": "dull film", "label": 0}) + "\n")
        f.write("{broken\n")
        f.write(json.dumps({"text": "no label here"}) + "\n")
        f.write(json.dumps({"text": "", "label": True}) + "\n")
    cfg = InputConfig(paths=[str(p)])
    rows = list(read_columns(cfg, {"text": "text", "gold": "label"}))
    # The row ids are the ones the readers give a run (source#position, blank lines counted).
    run_ids = [r for t in read_units(list_sources(cfg)[0], cfg, 1000) for r in t["row_id"].to_pylist()]
    assert [r["row_id"] for r in rows] == run_ids
    assert [(r["text"], r["gold"]) for r in rows] == [
        ("great film", "1"), ("dull film", "0"), (None, None), ("no label here", None), (None, "true"),
    ]
    # Model input stays strict: numbers are only taken as text for gold columns.
    assert list(read_columns(cfg, {"gold": "label"}, limit=1, require=("gold",)))[0]["gold"] == "1"
    only_labeled = list(read_columns(cfg, {"text": "text", "gold": "label"}, require=("text", "gold")))
    assert [r["gold"] for r in only_labeled] == ["1", "0"]


def test_csv_and_parquet_gold_columns(tmp_path):
    c = tmp_path / "a.csv"
    with open(c, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "ref"])
        w.writerow(["x1", "Hello there.", "Bonjour."])
        w.writerow(["x2", "Thanks.", ""])
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["One.", "Two."], "label": pa.array([1, 0], pa.int64())}),
                   tmp_path / "b.parquet")
    rows = list(read_columns(InputConfig(paths=[str(c)], id_field="id"), {"text": "text", "gold": "ref"}))
    assert [(r["row_id"], r["gold"]) for r in rows] == [("x1", "Bonjour."), ("x2", None)]
    rows = list(read_columns(InputConfig(paths=[str(tmp_path / "b.parquet")], id_field="id"),
                             {"text": "text", "gold": "label"}))
    assert [(r["row_id"], r["text"], r["gold"]) for r in rows] == [("p1", "One.", "1"), ("p2", "Two.", "0")]


def test_sample_file_and_eval_spec(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "body": f"text {i}", "label": i % 2}) + "\n" for i in range(6))
                 + json.dumps({"id": "nolabel", "body": "x"}) + "\n", encoding="utf-8")
    spec = JobSpec.model_validate({
        "input": {"paths": [str(p)], "text_field": "body", "id_field": "id"},
        "output": {"path": str(tmp_path / "out")},
        "tasks": {"sentiment": {}, "translation": {"target_lang": "French"}},
        "evaluation": {"references": {"sentiment": "label"}, "label_map": {"1": "positive", "0": "negative"}},
    })
    s = write_sample(spec, tmp_path / "w" / "sample.jsonl", rows=4)
    lines = [json.loads(x) for x in s.path.read_text().splitlines()]
    assert s.rows == 4 and [x["id"] for x in lines] == ["r0", "r1", "r2", "r3"]
    assert lines[1] == {"id": "r1", "text": "text 1", "gold_sentiment": "1"}
    mtime = s.path.stat().st_mtime_ns
    assert write_sample(spec, s.path, rows=4).path.stat().st_mtime_ns == mtime  # unchanged: same file, same run id
    es = eval_spec(spec, s.path, tmp_path / "w" / "out")
    assert list(es.tasks.enabled()) == ["sentiment"]  # only graded tasks run
    assert es.input.id_field == "id" and es.evaluation.references == {"sentiment": "gold_sentiment"}
    assert es.evaluation.label_map == {"1": "positive", "0": "negative"}
    full = write_sample(spec, tmp_path / "w2" / "sample.jsonl", rows=None)
    assert (full.rows, full.without_reference) == (6, 1)


def test_evaluation_spec_validation():
    import pytest
    from pydantic import ValidationError

    base = {"input": {"paths": ["a.jsonl"]}, "output": {"path": "o"}, "tasks": {"sentiment": {}}}
    with pytest.raises(ValidationError, match="not enabled: summarization"):
        JobSpec.model_validate({**base, "evaluation": {"references": {"summarization": "summary"}}})
    with pytest.raises(ValidationError):
        JobSpec.model_validate({**base, "evaluation": {"references": {}}})
    a = JobSpec.model_validate(base)
    b = JobSpec.model_validate({**base, "evaluation": {"references": {"sentiment": "label"}}})
    assert a.result_fingerprint("m") == b.result_fingerprint("m")  # grading never recomputes a run


def test_eval_flags_become_the_evaluation_section(tmp_path):
    import pytest

    from pipeline.cli import _eval_spec, build_parser, main
    from pipeline.errors import ExitStatus, UsageError

    spec_file = tmp_path / "j.yaml"
    spec_file.write_text("input: {paths: [a.jsonl]}\ntasks: {sentiment: {}, summarization: {}}\n")
    parse = build_parser().parse_args
    args = parse(["eval", "--reference-field", "label", "--task", "sentiment", "--label-map", "1=positive, 0=negative"])
    spec = _eval_spec(args, str(spec_file), str(tmp_path / "w"))
    assert spec.evaluation.references == {"sentiment": "label"}
    assert spec.evaluation.label_map == {"1": "positive", "0": "negative"}
    with pytest.raises(UsageError, match="--task"):  # two tasks: which one does the field grade?
        _eval_spec(parse(["eval", "--reference-field", "label"]), str(spec_file), str(tmp_path / "w"))
    with pytest.raises(UsageError, match="nothing to grade against"):
        _eval_spec(parse(["eval"]), str(spec_file), str(tmp_path / "w"))
    assert main(["eval", "--compare", "a.yaml", "b.yaml", "-n", "0"]) == ExitStatus.USAGE
    one = _eval_spec(parse(["eval", "--input", "x.jsonl", "--tasks", "translation", "--target-lang", "French",
                            "--reference-field", "fr"]), None, str(tmp_path / "w"))
    assert one.evaluation.references == {"translation": "fr"}


def test_run_quality_reads_published_outputs_and_samples_repetition_on_large_runs(tmp_path, monkeypatch):
    """A published output written by hand (manifest + Parquet): the quality section counts
    every output, and checks repetition on an even sample once a run is larger than
    REPETITION_SAMPLE."""
    from pipeline.eval import run as R
    from pipeline.io.commit import MANIFEST

    out = tmp_path / "out"
    (out / "summarization").mkdir(parents=True)
    texts = ["a b c d e f a b c d e f"] * 5 + ["one clean sentence here"] * 4 + [""]
    fins = ["length"] * 3 + ["stop"] * 7
    pq.write_table(pa.table({"row_id": [f"r{i}" for i in range(10)], "output_text": texts, "finish_reason": fins}),
                   out / "summarization" / "part-0.parquet")
    (out / MANIFEST).write_text(json.dumps({"version": 1, "datasets": {"summarization": ["summarization/part-0.parquet"]}}))
    spec = JobSpec.model_validate({"input": {"paths": ["x"]}, "output": {"path": str(out)}, "tasks": {"summarization": {}}})
    q = R.run_quality(spec)["summarization"]
    assert (q.outputs, q.truncated, q.empty, q.repetitive, q.repetition_checked) == (10, 3, 1, 5, 10)
    assert q.repetitive_share == 0.5
    monkeypatch.setattr(R, "REPETITION_SAMPLE", 3)  # stride 4: rows 0, 4, 8 are checked
    q = R.run_quality(spec)["summarization"]
    assert (q.outputs, q.truncated, q.repetition_checked, q.repetitive) == (10, 3, 3, 2)


def test_printed_run_summary_has_the_quality_and_metric_lines(capsys):
    from pipeline.batch.summary import RunSummary
    from pipeline.cli import _print_summary
    from pipeline.eval.records import Quality, RunEvaluation, TaskMetrics

    q = Quality(outputs=50, truncated=10, truncated_share=0.2, empty=0, empty_share=0.0,
                repetition_checked=50, repetitive=5, repetitive_share=0.1, seq_rep_4=0.05)
    ev = RunEvaluation(quality={"summarization": q}, metrics={"summarization": TaskMetrics(
        reference_field="summary", rows=50, failed=0, metrics={"rouge1": 20.0, "rouge2": 3.0, "rougeL": 15.0},
        quality=q, lead_baseline={"rouge1": 16.6, "rouge2": 1.8, "rougeL": 12.6})})
    s = RunSummary(run_id="r1", status="published", output="out", evaluation=ev)
    _print_summary(s)
    text = capsys.readouterr().out
    assert "quality summarization  of 50 outputs: cut at max_tokens 10 (20.0%), empty 0, repeating itself 5 (10.0%)" in text
    assert "metrics summarization  vs 'summary' (50 rows, 0 failed): rouge1 20.0, rouge2 3.0, rougeL 15.0" in text
    assert "lead-sentence baseline rougeL 12.6" in text
    assert RunSummary.model_validate(s.to_json()).evaluation == ev  # round trip through summary.json
