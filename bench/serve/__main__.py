"""`python -m bench.serve`: our endpoint against vLLM's own OpenAI server and Ray Serve LLM,
in one run, on the same model, engine settings and requests.

    python -m bench.serve                                  # tiny model and SmolLM2, all systems
    python -m bench.serve --models tiny --systems ours,vllm --concurrency 1,32
    python -m bench.serve --quick                          # small sizes: checks that everything runs

Each system is started in its own process session, warmed up, then measured at each
concurrency level (1, 8, 32, 64 clients by default), then stopped. On the tiny model the
systems are measured twice, interleaved (ours, vllm, rayserve_llm, ours, vllm), and each
figure is the mean of the passes: on a shared 2-core machine one pass can land on a slow
spell. Per level, the CPU seconds of each process kind (engine, API server, Serve proxy and
replica, Ray daemons, the load client) are recorded too: where the time goes. Every request is a
streamed chat completion of exactly `--max-tokens` tokens (greedy, `ignore_eos`) for a
distinct IMDB review (bench/data), so every system does the same work. Figures per level:
requests/s, output tokens/s, p50/p99 latency and time to first token. Results go to
--out (results.json, table.md); the table, with the issue's targets checked, prints last.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

from bench.serve.load import cpu_delta, cpu_snapshot, run_level
from bench.serve.servers import SYSTEMS, start

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "bench" / "data" / "imdb_sample200.jsonl"
ENGINE = {"max_model_len": 2048, "max_num_seqs": 256, "kv_cache_gib": 1.0}
# One OpenMP thread for every engine, on the same core: the same compute for everyone (vLLM
# reserves a core for its scheduler on x86; on 2 cores that leaves one).
OMP_BIND = "1"


def bodies(model_id: str, n: int, max_tokens: int, start: int = 0) -> list[dict[str, Any]]:
    docs = [json.loads(line)["text"] for line in open(DATA, encoding="utf-8")]
    out = []
    for i in range(start, start + n):
        text = docs[i % len(docs)][:400]
        out.append(
            {
                "model": model_id,
                # The request number first: no two prompts share more than the template's prefix.
                "messages": [{"role": "user", "content": f"Review {i}: {text}\nSummarize this review in one sentence."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
    return out


# Requests per client at each level (at least 16 requests per level): fewer on the real
# model, where each request takes seconds.
ROUNDS = {"tiny": 4, "smollm2": 2}


def requests_for(concurrency: int, rounds: int, quick: bool) -> int:
    return max(8, 2 * concurrency) if quick else max(16, rounds * concurrency)


def measure(system: str, model: str, levels: list[int], max_tokens: int, rounds: int, work: Path, quick: bool) -> dict[str, Any]:
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": OMP_BIND, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    running = start(system, model, ENGINE, work, env)
    print(f"  {system}: ready in {running.startup_seconds:.1f}s", flush=True)
    try:
        asyncio.run(run_level(running.url, bodies(running.model_id, 4, 8, start=10_000), 2))  # warm-up
        out = {"startup_seconds": round(running.startup_seconds, 1), "levels": []}
        offset = 0
        for c in levels:
            n = requests_for(c, rounds, quick)
            before = cpu_snapshot(running.proc.pid)
            client0 = time.process_time()
            res = asyncio.run(run_level(running.url, bodies(running.model_id, n, max_tokens, start=offset), c))
            res.cpu_seconds = {**cpu_delta(before, cpu_snapshot(running.proc.pid)), "load client": round(time.process_time() - client0, 2)}
            offset += n
            print(
                f"    c={c:<3} {res.requests_per_s:7.2f} req/s {res.output_tokens_per_s:8.1f} tok/s  "
                f"p50 {res.latency_p50_ms:8.1f} ms  p99 {res.latency_p99_ms:8.1f} ms  ttft p50 {res.ttft_p50_ms:7.1f} ms  "
                f"ok {res.ok}/{res.requests}",
                flush=True,
            )
            out["levels"].append(res.to_dict())
        return out
    finally:
        running.stop()


REPEATS = {"tiny": 2, "smollm2": 1}
_MEANS = ("requests_per_s", "output_tokens_per_s", "latency_p50_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p99_ms")


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several passes of one system: per level, the mean of each figure (each pass kept in `passes`)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    if len(ok) == 1:
        return ok[0]
    levels = []
    for lv in ok[0]["levels"]:
        same = [next(x for x in r["levels"] if x["concurrency"] == lv["concurrency"]) for r in ok]
        merged = dict(lv)
        for k in _MEANS:
            merged[k] = round(sum(x[k] for x in same) / len(same), 2)
        merged["requests"], merged["ok"] = sum(x["requests"] for x in same), sum(x["ok"] for x in same)
        levels.append(merged)
    return {"startup_seconds": ok[0]["startup_seconds"], "levels": levels, "passes": ok}


def level(result: dict[str, Any], c: int) -> Optional[dict[str, Any]]:
    return next((x for x in result.get("levels", []) if x["concurrency"] == c), None)


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, as ratios to vLLM's own server."""
    out = []
    for model, systems in report["results"].items():
        ours, peer = systems.get("ours"), systems.get("vllm")
        if not ours or not peer or "error" in ours or "error" in peer:
            continue
        a, b = level(ours, 32), level(peer, 32)
        if a and b and b["output_tokens_per_s"]:
            r = a["output_tokens_per_s"] / b["output_tokens_per_s"]
            out.append({"model": model, "what": "throughput at 32 clients, ours / vllm (>= 0.9)", "value": round(r, 3), "ok": r >= 0.9})
        a, b = level(ours, 1), level(peer, 1)
        if a and b and b["latency_p50_ms"]:
            r = a["latency_p50_ms"] / b["latency_p50_ms"]
            out.append({"model": model, "what": "p50 latency at 1 client, ours / vllm (<= 1.2)", "value": round(r, 3), "ok": r <= 1.2})
    return out


def render_table(report: dict[str, Any]) -> str:
    lines = []
    for model, systems in report["results"].items():
        lines += [
            f"### {model}: {report['max_tokens']} output tokens per request, streamed",
            "",
            "| system | clients | req/s | output tok/s | p50 latency ms | p99 latency ms | p50 TTFT ms | p99 TTFT ms | ok |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for system, res in systems.items():
            if "error" in res:
                lines.append(f"| {system} | - | could not run: {res['error'][:120]} | | | | | | |")
                continue
            for x in res["levels"]:
                lines.append(
                    f"| {system} | {x['concurrency']} | {x['requests_per_s']:.2f} | {x['output_tokens_per_s']:.1f} | "
                    f"{x['latency_p50_ms']:.0f} | {x['latency_p99_ms']:.0f} | {x['ttft_p50_ms']:.0f} | {x['ttft_p99_ms']:.0f} | "
                    f"{x['ok']}/{x['requests']} |"
                )
        lines.append("")
    if report.get("checks"):
        lines += ["| target | model | value | met |", "| --- | --- | ---: | --- |"]
        for c in report["checks"]:
            lines.append(f"| {c['what']} | {c['model']} | {c['value']} | {'yes' if c['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="tiny,smollm2", help="comma-separated: tiny, smollm2")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of: {','.join(SYSTEMS)}")
    ap.add_argument("--concurrency", default="1,8,32,64", help="client counts, comma-separated")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (exact: ignore_eos)")
    ap.add_argument("--quick", action="store_true", help="fewer requests per level")
    ap.add_argument("--repeats", type=int, help="passes over the systems per model (default: tiny 2, smollm2 1)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve"))
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pipeline-bench-serve"))
    args = ap.parse_args(argv)

    from pipeline.engine import build_tiny_model, resolve_model

    work = Path(args.work)
    paths = {"tiny": lambda: str(build_tiny_model(work / "tiny-model")), "smollm2": lambda: str(resolve_model(None))}
    levels = [int(c) for c in args.concurrency.split(",")]
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": sys.version.split()[0]},
        "engine": ENGINE,
        "omp_bind": OMP_BIND,
        "max_tokens": args.max_tokens,
        "concurrency": levels,
        "results": {},
    }
    systems = args.systems.split(",")
    for name in args.models.split(","):
        model = paths[name]()
        repeats = args.repeats if args.repeats is not None else REPEATS[name]
        print(f"{name}: {model} ({repeats} pass(es))", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        # Passes interleave the systems (ours, vllm, ..., ours, vllm, ...): a slow spell of the
        # machine then weighs on every system alike.
        for _ in range(repeats):
            for system in systems:
                if system == "rayserve_llm" and runs[system]:
                    continue  # once is enough for the slowest peer (no target is checked against it)
                try:
                    runs[system].append(measure(system, model, levels, args.max_tokens, ROUNDS[name], work / name, args.quick))
                except Exception as e:  # noqa: BLE001 - a system that cannot run here is reported, not fatal
                    print(f"  {system}: could not run: {e}", flush=True)
                    runs[system].append({"error": str(e)[-2000:]})
        report["results"][name] = {s: combine(r) for s, r in runs.items() if r}
    report["checks"] = checks(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    table = render_table(report)
    (out / "table.md").write_text(table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
