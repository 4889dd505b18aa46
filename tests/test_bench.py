"""The benchmark's own logic: workloads give every system the same, distinct prompts; the
report's target checks compute the right ratios. (Running the systems is `python -m bench`.)"""

import json

from bench.__main__ import checks, ratios, render_table
from bench.common import Workload
from bench.workloads import build, corpus


def test_corpus_rows_are_distinct_even_past_the_bundled_documents():
    rows = corpus(600, 40)  # 250 documents: rows 250.. are rotated copies
    assert len({r["text"] for r in rows}) == 600
    assert len({r["id"] for r in rows}) == 600
    assert all(0 < len(r["text"].split()) <= 40 for r in rows)


def test_workload_prompts_are_what_our_tasks_render(tmp_path, tiny_model, tiny_tokenizer):
    from pipeline.config import TasksConfig
    from pipeline.tasks import build_tasks
    from pipeline.tasks.prompting import render_tokens

    sampling = {"temperature": 0.0, "max_tokens": 8, "min_tokens": 8}
    wl = build(tmp_path / "wl", "t", tiny_model, 12, 30, sampling, engine={"max_model_len": 512})
    again = Workload.load(tmp_path / "wl")
    assert again.rows == 12 and again.fixed_length and again.model == str(tiny_model)
    (task,) = build_tasks(TasksConfig(summarization={"sampling": sampling}))
    texts = [json.loads(line)["text"] for line in open(wl.corpus_path)]
    assert again.prompts() == [render_tokens(task, t, tiny_tokenizer, 512, "truncate")[0] for t in texts]
    kw = again.vllm_engine_kwargs()
    assert kw["model"] == str(tiny_model) and kw["max_model_len"] == 512 and kw["dtype"] in ("float32", "bfloat16")


def _r(tok_s, with_startup, seconds, rss=100.0, rows=100):
    return {"tok_s": tok_s, "tok_s_with_startup": with_startup, "process_seconds": seconds, "rows": rows,
            "driver_peak_rss_mib": rss, "output_tokens": 1000, "startup_seconds": 1.0, "run_seconds": 2.0,
            "rows_s": 50.0, "workers_peak_rss_mib": 10.0}


def test_checks_report_each_target_with_its_figure():
    tiny = {"ours": _r(95, 40, 110), "vllm": _r(100, 50, 100), "raydata_llm": _r(50, 20, 300)}
    natural = {"ours": _r(100, 60, 100), "vllm": _r(101, 61, 99), "transformers": _r(80, 70, 120)}
    report = {
        "machine": {"cpu": "x", "cores": 2, "memory_gib": 1, "versions": {}}, "started": "t", "command": "c",
        "workloads": {
            "tiny-fixed": {"results": tiny, "ratios": ratios(tiny)},
            "smollm2-natural": {"results": natural, "ratios": ratios(natural)},
            "memory-10k": {"results": {"ours": _r(1, 1, 1, rss=400, rows=10_000)}},
            "memory-100k": {"results": {"ours": _r(1, 1, 1, rss=520, rows=100_000)}},
        },
    }
    got = {c["target"]: (c["measured"], c["met"]) for c in checks(report)}
    assert got["tiny: ours >= 0.9x raw vLLM tok/s, start-up excluded"] == (0.95, True)
    assert got["tiny: ours' whole run within 1.15x raw vLLM's, start-up included"] == (1.1, True)
    assert got["tiny-fixed: ours >= 1.3x Ray Data LLM tok/s"] == (1.9, True)
    assert got["smollm2-natural: ours >= 1.5x transformers tok/s"] == (1.25, False)
    assert got["smollm2-fixed: ours >= 0.95x raw vLLM tok/s, start-up excluded"] == (None, None)
    assert got["driver peak RSS, 100,000 rows / 10,000 rows <= 1.2"] == (1.3, False)
    report["checks"] = checks(report)
    table = render_table(report)
    assert "| tiny-fixed | vllm |" in table and "**no**" in table and "not measured" in table


def test_a_failed_system_has_no_ratio():
    assert ratios({"ours": _r(1, 1, 1), "vllm": {"failed": True}}) == {}
    assert ratios({"ours": {"failed": True}, "vllm": _r(1, 1, 1)}) == {}


def test_reader_benchmark_reads_every_row(tmp_path):
    """`python -m bench.readers` measures what it claims: every row of every file, no errors.
    (The speed itself is a printed figure, not an assert: see bench/readers.py.)"""
    from bench.readers import COMPRESSIONS, FORMATS, measure

    figures = measure(tmp_path, rows=500, repeat=1)
    assert [(f["format"], f["compression"]) for f in figures] == [(f, c) for f in FORMATS for c in COMPRESSIONS]
    assert all(f["rows"] == 500 and f["error_rows"] == 0 and f["rows_per_second"] > 0 for f in figures)
