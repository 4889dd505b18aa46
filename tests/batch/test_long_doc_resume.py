"""A long document in a batch run (real Ray, real vLLM on the tiny model): killed while its
parts are in the engine, the run resumes and publishes it exactly once, whole.

One file: a document of many contexts first, then short rows. Commit units of two rows and
batches of four, so the long document's batch stays open while later batches commit.
"""

import json

import pytest

from pipeline.io.commit import read_dataset

from clijob import committed_rows, kill_group, run_cli, start_cli, wait_for, write_spec

pytestmark = pytest.mark.engine

MAX_LEN = 512
N_SHORT = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("corpus")
    paras = [" ".join(f"Section {i}, line {j}: the council met and the vote passed." for j in range(1 + (i * 5) % 17)) for i in range(150)]
    long_text = "\n\n".join(paras)
    assert len(tiny_tokenizer.encode(long_text)) > 40 * MAX_LEN
    ids = ["long-0"] + [f"short-{k}" for k in range(N_SHORT)]
    with open(d / "docs.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "long-0", "text": long_text}) + "\n")
        for k in range(N_SHORT):
            f.write(json.dumps({"id": f"short-{k}", "text": f"Row {k}: the film was fine."}) + "\n")
    return d, ids, len(paras)


def long_doc_committed(out) -> bool:
    for rec in out.glob("_staging/*/_commits/*.json"):
        try:
            if any(first == 0 for first, _ in json.loads(rec.read_text())["positions"]):  # position 0: the long document
                return True
        except (OSError, ValueError, KeyError):
            pass
    return False


def test_kill_during_a_split_document_then_resume(tmp_path, corpus, tiny_model):
    d, ids, n_paras = corpus
    out = tmp_path / "out"
    spec = write_spec(
        tmp_path / "job.yaml",
        input={"paths": [str(d)], "id_field": "id"},
        output={"path": str(out), "rows_per_unit": 2},
        tasks={"translation": {"target_lang": "French", "sampling": {"max_tokens": 48, "min_tokens": 8}}},
        model={"path": str(tiny_model)},
        # Few sequences at once: the long document's parts take several waves, so later
        # batches commit while it is still in the engine.
        engine={"max_model_len": MAX_LEN, "batch_rows": 4, "max_num_seqs": 16, "kv_cache_gib": 0.25},
    )
    proc = start_cli("run", str(spec), log=tmp_path / "run1.log")
    try:
        wait_for(lambda: committed_rows(out) >= 8, 600, "short rows committed", proc)
    finally:
        kill_group(proc)
    assert not long_doc_committed(out), "the long document finished before the kill: make it longer"
    assert committed_rows(out) < len(ids)

    run_cli("run", str(spec))
    s = json.loads((out / "summary.json").read_text())
    assert s["rows"] == len(ids) and s["rows_resumed"] >= 8
    t = read_dataset(str(out), "translation")
    errors = read_dataset(str(out), "errors")
    got = t["row_id"].to_pylist() + errors["row_id"].to_pylist()
    assert sorted(got) == sorted(ids)  # every row exactly once, the long one included
    rows = {r["row_id"]: r for r in t.to_pylist()}
    long_row = rows.pop("long-0")
    assert long_row["parts"] > 40 and long_row["input_truncated"] is False
    assert len(long_row["output_text"].split("\n\n")) == n_paras  # whole: one paragraph per source paragraph
    assert {r["parts"] for r in rows.values()} == {1}
