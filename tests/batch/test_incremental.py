"""Poison rows, crashes inside the commit phase, and incremental (nightly) runs.

One output folder evolves through the module: a first run over a clean corpus with poison
rows mixed in (killed inside its publish, then finished), then incremental runs as new files
arrive (the last one killed inside its publish onto the earlier output).
"""

import json

import pytest

from pipeline.io.commit import read_dataset, read_manifest
from pipeline.io.store import Store

from clijob import run_cli, write_jsonl_corpus, write_spec

pytestmark = pytest.mark.engine

POISON = {
    "poison-empty": ("", "empty_text"),
    "poison-nul": ("text with a \x00 NUL byte", "invalid_text"),
    "poison-megabyte": ("word " * 200_000, "too_long"),
    "poison-too-long": ("token " * 3_000, "too_long"),
}
FINE = {"fine-emoji": "Loved it 😀🎬👍 would watch again", "fine-rtl": "הסרט היה נהדר، والتمثيل رائع"}


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("incremental")
    corpus, out = d / "corpus", d / "out"
    ids = write_jsonl_corpus(corpus, {"a.jsonl": 30})
    with open(corpus / "b.jsonl", "wb") as f:
        for rid, (text, _) in POISON.items():
            f.write(json.dumps({"id": rid, "text": text}).encode() + b"\n")
        for rid, text in FINE.items():
            f.write(json.dumps({"id": rid, "text": text}, ensure_ascii=False).encode() + b"\n")
        f.write(b'{"id": "poison-utf8", "text": "bad \xff\xfe bytes"}\n')
        f.write(b'{"id": "poison-json", "text": "unterminated\n')
    # The malformed line has no readable id: it gets "<source>#<line>" (0-based line 7).
    ids += list(POISON) + list(FINE) + ["poison-utf8", f"{corpus / 'b.jsonl'}#7"]
    spec = write_spec(
        d / "job.yaml",
        input={"paths": [str(corpus)], "id_field": "id"},
        output={"path": str(out), "rows_per_unit": 10},
        tasks={"sentiment": {}},
        model={"path": str(tiny_model)},
        engine={"max_model_len": 512, "batch_rows": 16, "context_policy": "reject"},
    )
    return {"corpus": corpus, "out": out, "spec": spec, "ids": ids}


def all_ids(out):
    ok = read_dataset(str(out), "sentiment")["row_id"].to_pylist()
    err = read_dataset(str(out), "errors")["row_id"].to_pylist()
    return ok, err


def outside_staging(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet") if "_staging" not in p.parts)


def test_crash_in_publish_onto_empty_output_then_finish(job):
    out = job["out"]
    p = run_cli("run", str(job["spec"]), env={"PIPELINE_FAULT": "publish-step:1"}, check=False)
    assert p.returncode == 86, p.stderr[-3000:]
    assert read_manifest(Store(str(out))) is None  # readers see the old (empty) output
    plan = json.loads(next(out.glob("_staging/*/_publish.json")).read_text())
    planned = {step["dst"] for step in plan["steps"]}
    assert set(outside_staging(out)) <= planned  # only files of the pending plan, none else
    p = run_cli("run", str(job["spec"]))
    assert "computed now: 0" in p.stdout  # finishing the publish recomputes nothing
    assert set(outside_staging(out)) == planned


def test_poison_rows_become_error_records(job):
    out = job["out"]
    ok, err = all_ids(out)
    assert len(ok) + len(err) == len(job["ids"]) and sorted(ok + err) == sorted(job["ids"])
    errors = read_dataset(str(out), "errors")
    kinds = dict(zip(errors["row_id"].to_pylist(), errors["error_kind"].to_pylist()))
    ids_of_json_error = [i for i in kinds if i.endswith("b.jsonl#7")]
    expected = {rid: kind for rid, (_, kind) in POISON.items()} | {"poison-utf8": "invalid_utf8"}
    assert len(ids_of_json_error) == 1 and kinds.pop(ids_of_json_error[0]) == "malformed_record"
    assert kinds == expected
    assert set(FINE) <= set(ok)  # emoji and right-to-left text are fine input


def test_incremental_run_processes_only_new_files(job):
    out, corpus = job["out"], job["corpus"]
    new_ids = write_jsonl_corpus(corpus, {"c.jsonl": 12}, start=1000)
    run_cli("run", str(job["spec"]), "--incremental")
    s = json.loads((out / "summary.json").read_text())
    assert s["input_files"] == 1 and s["rows_computed"] == 12
    ok, err = all_ids(out)
    assert sorted(ok + err) == sorted(job["ids"] + new_ids)
    # nothing new: nothing to do
    p = run_cli("run", str(job["spec"]), "--incremental")
    assert "computed now: 0" in p.stdout
    job["ids"] += new_ids


def test_crash_in_publish_onto_earlier_output_keeps_it_whole(job):
    out, corpus = job["out"], job["corpus"]
    before = sorted(sum(all_ids(out), []))
    new_ids = write_jsonl_corpus(corpus, {"d.jsonl": 8}, start=2000)
    p = run_cli("run", str(job["spec"]), "--incremental", env={"PIPELINE_FAULT": "publish-step:0"}, check=False)
    assert p.returncode == 86
    assert sorted(sum(all_ids(out), [])) == before  # old version, complete
    run_cli("run", str(job["spec"]), "--incremental")
    assert sorted(sum(all_ids(out), [])) == sorted(before + new_ids)
    manifest = read_manifest(Store(str(out)))
    assert set(outside_staging(out)) == manifest.files()
    listing = run_cli("runs", str(out)).stdout
    assert len(manifest.runs) == 3 and all(r in listing for r in manifest.runs)


def test_retry_errors_moves_dead_letters_into_results_exactly_once(job):
    out = job["out"]
    before_ok, before_err = all_ids(out)
    too_long = [rid for rid, (_, kind) in POISON.items() if kind == "too_long"]
    assert set(too_long) <= set(before_err)
    # Retry the too-long rows with truncation allowed: they become results.
    p = run_cli("retry-errors", str(job["spec"]), "--kinds", "too_long", "--context-policy", "truncate")
    assert "computed now: 2" in p.stdout, p.stdout
    ok, err = all_ids(out)
    assert sorted(ok + err) == sorted(before_ok + before_err)  # still exactly once
    assert set(too_long) <= set(ok) and not set(too_long) & set(err)
    assert set(err) == set(before_err) - set(too_long)  # other dead letters untouched
    sentiment = read_dataset(str(out), "sentiment").to_pylist()
    assert all(r["input_truncated"] for r in sentiment if r["row_id"] in too_long)
    # Nothing left of that kind: a second retry computes nothing.
    p = run_cli("retry-errors", str(job["spec"]), "--kinds", "too_long", "--context-policy", "truncate")
    assert "computed now: 0" in p.stdout


def test_retry_errors_refuses_another_configuration(job, tmp_path):
    """Retried rows must come from the model and prompts their neighbours came from: a spec
    that changed anything but the fit-the-context settings is refused before anything runs."""
    import yaml

    spec = yaml.safe_load(job["spec"].read_text())
    spec["tasks"]["sentiment"] = {"prompt": {"system": "Answer with one of: {labels}."}}
    changed = write_spec(tmp_path / "changed.yaml", **spec)
    p = run_cli("retry-errors", str(changed), "--kinds", "empty_text", check=False)
    assert p.returncode == 1, p.stderr
    assert "another configuration" in p.stderr and "--force" in p.stderr
    assert "Traceback" not in p.stderr
    assert len([line for line in p.stderr.splitlines() if line.startswith("error:")]) == 1
