"""`python -m bench.threads`: the thread and engine layouts tried on this machine, side by side.

    python -m bench.threads                                   # every configuration, SmolLM2 64 rows x 64 tokens
    python -m bench.threads --only "vllm bind=all,ours (planned)" --rows 128
    python -m bench.threads --workload tiny --rows 1000

Each configuration is one run of a benchmark system (`bench.systems.*`) in a fresh process
with its own environment and engine settings, on the same workload folder. Prints, and
writes to --out, a table of output and prompt + output tokens/s after start-up, the model
FLOP utilization, the start-up, and each configuration's gain over the first one (vLLM's
default binding), next to the gain predicted before measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from bench.__main__ import FIXED, ROOT, _physical_cores, bind_all_env, derive, measure_peaks, models, run_system, system_dtype, vllm_threads


def configurations(cores: int) -> list[tuple[str, str, dict[str, Any], str]]:
    """(label, system, options, predicted gain over vLLM's default binding and why), the
    predictions written before measuring."""
    bind_all = bind_all_env(cores)
    # raw vLLM with everything in one process (vLLM's own single-process mode): the model
    # runs in the calling process, so its OpenMP settings are this process's
    one_process = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(cores),
                   "OMP_PLACES": ",".join(f"{{{c}}}" for c in range(cores)), "OMP_PROC_BIND": "true"}
    passive = {"OMP_WAIT_POLICY": "passive"}
    return [
        ("vllm bind=auto (vLLM's default)", "vllm", {}, "1.0: the reference (one core computes, one is kept for the scheduler)"),
        ("vllm bind=all", "vllm", {"env": bind_all}, f"~{cores / max(1, cores - 1):.1f}x by core count, less the cores' sharing with the scheduler"),
        ("vllm bind=all OMP_WAIT_POLICY=passive", "vllm", {"env": {**bind_all, **passive}},
         "+5% over bind=all: idle compute threads sleep instead of spinning, the scheduler gets the core"),
        ("vllm bind=all OMP_WAIT_POLICY=active", "vllm", {"env": {**bind_all, "OMP_WAIT_POLICY": "active"}},
         "-10% under bind=all: threads spin between regions and starve the scheduler process on a shared core"),
        ("vllm bind=all GOMP_SPINCOUNT=10000", "vllm", {"env": {**bind_all, "GOMP_SPINCOUNT": "10000"}},
         "+3% over bind=all: a short spin, then sleep"),
        ("vllm bind=all libiomp5", "vllm", {"env": {**bind_all, "LD_PRELOAD": _iomp()}},
         "+0-5% over bind=all: Intel OpenMP (vLLM sets KMP_BLOCKTIME and affinity for it), vLLM's recommended runtime on x86"),
        ("vllm one process, all cores", "vllm", {"env": one_process},
         "+5% over bind=all: no scheduler process polling for the worker; start-up -10 s (two process starts fewer)"),
        ("ours cpu_bind=auto (before)", "ours", {"engine": {"cpu_bind": "auto"}}, "~1.0x (the pipeline on vLLM's default)"),
        ("ours (planned)", "ours", {}, "= vllm bind=all x 0.95 (the pipeline's own work shares the cores)"),
        ("ours passive", "ours", {"env": passive}, "+10% over ours (planned): the actor's output processing gets the cycles threads would spin"),
        ("ours 2 engines x 1 core", "ours", {"resources": {"actors": 2}},
         "below ours (planned): two schedulers, two actors and two model copies on 2 cores"),
        ("ours reserved core", "ours", {"engine": {"cpu_reserved_cores": 1}},
         "= ours cpu_bind=auto: the same layout, chosen by our plan"),
    ]


def _iomp() -> str:
    import glob

    found = glob.glob(os.path.join(sys.prefix, "lib", "libiomp5.so"))
    return found[0] if found else "libiomp5.so"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("smollm2", "tiny"), default="smollm2")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated labels")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "threads"))
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pipeline-bench"))
    args = ap.parse_args(argv)

    from bench.workloads import build
    from pipeline.engine.flops import ModelFlops

    cores = _physical_cores()
    out, work = Path(args.out), Path(args.work)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    paths = models(work)
    name = f"threads-{args.workload}-{args.rows}"
    tokens = 64 if args.workload == "smollm2" else 32
    wl = build(work / "threads" / name, name, paths[args.workload], args.rows, 200 if args.workload == "smollm2" else 60, FIXED(tokens))
    flops = ModelFlops.from_model(paths[args.workload])
    peaks = measure_peaks(cores)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    results: dict[str, Any] = {}
    for label, system, options, predicted in configurations(cores):
        if only and label not in only:
            continue
        slug = "".join(ch if ch.isalnum() else "_" for ch in label)
        print(f"[threads] {label} ...", flush=True)
        r = run_system(system, wl.dir, out / "logs" / f"{name}.{slug}.json", out / "logs" / f"{name}.{slug}.log", options)
        if not r.get("failed"):
            r["dtype"] = system_dtype(r)
            if system == "vllm" and not r.get("engine_threads"):
                r["engine_threads"] = vllm_threads(r, cores)
        r = derive(r, flops)
        r["predicted"] = predicted
        results[label] = r
        if r.get("failed"):
            print(f"[threads] {label}: FAILED, see {r['log']}", flush=True)
        else:
            print(f"[threads] {label}: {r['tok_s']:.1f} tok/s, {r['total_tok_s']:.0f} prompt + output tok/s, "
                  f"MFU {r.get('mfu') or 0:.2f}, start-up {r['startup_seconds']:.1f}s", flush=True)
    report = {"workload": name, "rows": args.rows, "cores": cores, "matrix_peaks_gflops": peaks, "results": results,
              "command": " ".join(["python -m bench.threads", *(argv if argv is not None else sys.argv[1:])])}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    table = render(report)
    (out / f"{name}.md").write_text(table)
    print("\n" + table)
    return 0


def render(report: dict[str, Any]) -> str:
    res = report["results"]
    ref = next((r for r in res.values() if not r.get("failed")), None)
    lines = [f"`{report['command']}` ({report['cores']} cores; matrix peaks GFLOP/s: "
             + ", ".join(f"{k} {v:,.0f}" for k, v in report["matrix_peaks_gflops"].items()) + ")", "",
             "| configuration | predicted gain | measured gain | output tok/s | prompt + output tok/s | MFU | start-up s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, r in res.items():
        if r.get("failed"):
            lines.append(f"| {label} | {r['predicted']} | failed | | | | |")
            continue
        gain = r["tok_s"] / ref["tok_s"] if ref else 1.0
        mfu = f"{r['mfu']:.2f}" if r.get("mfu") is not None else ""
        lines.append(f"| {label} | {r['predicted']} | {gain:.2f}x | {r['tok_s']:.1f} | {r['total_tok_s']:.0f} | {mfu} | {r['startup_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
