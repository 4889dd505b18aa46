"""The serving benchmark's own logic: the statistics, the target checks, every system
started with the same engine settings. (Running it is `python -m bench.serve`.)"""

from bench.serve.__main__ import bodies, checks, render_table
from bench.serve.load import Sample, percentile, summarize
from bench.serve.servers import command, engine_kwargs


def test_statistics_of_a_level():
    samples = [Sample(True, latency=0.1 * i, ttft=0.01 * i, output_tokens=10) for i in range(1, 101)]
    samples.append(Sample(False, 5.0, None, 0, status=503))
    r = summarize(8, samples, wall=10.0)
    assert (r.requests, r.ok, r.statuses) == (101, 100, {"200": 100, "503": 1})
    assert r.requests_per_s == 10.0 and r.output_tokens_per_s == 100.0
    assert r.latency_p50_ms == 5050.0 and r.latency_p99_ms == 9900.0 and r.ttft_p99_ms == 990.0
    assert percentile([3.0], 99) == 3.0


def _res(tok_s, p50):
    def level(c, **kw):
        base = summarize(c, [Sample(True, 1.0, 0.1, 10)], 1.0).to_dict()
        return {**base, **kw}

    return {"levels": [level(1, latency_p50_ms=p50), level(32, output_tokens_per_s=tok_s)]}


def test_checks_are_ratios_to_vllm():
    report = {"max_tokens": 64, "results": {"tiny": {"ours": _res(95.0, 120.0), "vllm": _res(100.0, 100.0)}}}
    got = {c["what"].split(",")[0]: (c["value"], c["ok"]) for c in checks(report)}
    assert got == {"throughput at 32 clients": (0.95, True), "p50 latency at 1 client": (1.2, True)}
    report["results"]["tiny"]["ours"] = _res(80.0, 130.0)
    assert [c["ok"] for c in checks(report)] == [False, False]
    report["results"]["tiny"]["rayserve_llm"] = {"error": "no GPU"}
    assert "could not run" in render_table(report)


def test_every_system_gets_the_same_engine_settings(tmp_path, tiny_model):
    engine = {"max_model_len": 1024, "max_num_seqs": 32, "kv_cache_gib": 0.5}
    kw = engine_kwargs(str(tiny_model), engine)
    vllm = command("vllm", str(tiny_model), engine, 8001, tmp_path)
    args = vllm[vllm.index("--model"):]
    flags = {a: b for a, b in zip(args, args[1:]) if a.startswith("--")}
    assert flags["--max-model-len"] == "1024" and flags["--max-num-seqs"] == "32" and flags["--dtype"] == kw["dtype"]
    assert flags["--kv-cache-memory-bytes"] == str(kw["kv_cache_memory_bytes"]) and flags["--block-size"] == str(kw["block_size"])
    ours = command("ours", str(tiny_model), engine, 8002, tmp_path)
    from pipeline.config import ServeConfig

    assert ServeConfig.from_yaml(ours[-1]).engine.model_dump(exclude_unset=True) == engine
    b = bodies("m", 3, 16)
    assert len({x["messages"][0]["content"] for x in b}) == 3 and all(x["max_tokens"] == 16 and x["ignore_eos"] for x in b)


def test_passes_are_averaged_per_level():
    from bench.serve.__main__ import combine

    a, b = _res(100.0, 10.0), _res(80.0, 30.0)
    got = combine([{**a, "startup_seconds": 1}, {**b, "startup_seconds": 2}])
    lv = {x["concurrency"]: x for x in got["levels"]}
    assert lv[32]["output_tokens_per_s"] == 90.0 and lv[1]["latency_p50_ms"] == 20.0 and lv[1]["requests"] == 2
    assert len(got["passes"]) == 2 and combine([{"error": "x"}]) == {"error": "x"}
