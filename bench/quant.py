"""`python -m bench.quant`: quantized forms of the default model against the unquantized one,
on raw vLLM with the thread binding of `bench.threads` ("vllm bind=all").

    python -m bench.quant --rows 128 --repeat 2
    python -m bench.quant --forms "bf16,W8A8 int8" --rows 256

The workload is bench.threads' SmolLM2 one (200-word documents, exactly 64 output tokens); the
quantized checkpoints are built from the local HF model by `bench.quant_build` (data-free) into
--work on first use. Forms run interleaved, --repeat times each (the machine is shared), and each
figure is reported per run and as the median. Writes bench/results/quant/quant-smollm2-ROWS.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from bench.__main__ import FIXED, ROOT, _physical_cores, bind_all_env, derive, models, run_system, system_dtype

# label -> (quant_build scheme or None for the model itself, engine settings)
FORMS: dict[str, tuple[Optional[str], dict[str, Any]]] = {
    "bf16 (default)": (None, {}),
    "fp32": (None, {"dtype": "float32"}),
    "W8A8 int8": ("W8A8", {}),
    "W8A8 int8 bf16 down_proj": ("W8A8-keep-down", {}),
    "W4A16 g64": ("W4A16", {}),
    "W8A16 g64": ("W8A16", {}),
}


def checkpoint(src: str, scheme: Optional[str], work: Path) -> str:
    if scheme is None:
        return src
    out = work / "quant-models" / f"{Path(src).name}-{scheme}-g64"
    if not (out / "config.json").exists():
        from bench.quant_build import build

        build(Path(src), out, scheme, 64)
    return str(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--forms", default="", help=f"comma-separated, of: {', '.join(FORMS)}; each may end in ' + zentorch'")
    ap.add_argument("--zentorch", default="", help="a folder holding AMD's zentorch (pip install --no-deps --target DIR "
                    "zentorch==<torch's version> deprecated): adds the forms '... + zentorch', run with it on the path, "
                    "where vLLM picks its Zen CPU platform and kernels (AMD CPUs with AVX-512)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "quant"))
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pipeline-bench"))
    args = ap.parse_args(argv)

    from bench.workloads import build

    cores = _physical_cores()
    bind_all = bind_all_env(cores)
    out, work = Path(args.out), Path(args.work)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    src = models(work)["smollm2"]
    zen = {"PYTHONPATH": os.pathsep.join([str(ROOT), args.zentorch, os.environ.get("PYTHONPATH", "")])} if args.zentorch else {}
    chosen = [f.strip() for f in args.forms.split(",") if f.strip()]
    if not chosen:  # every form, and with --zentorch each one zentorch has kernels for (not fp32, W8A16)
        chosen = list(FORMS) + ([f"{label} + zentorch" for label in FORMS if label not in ("fp32", "W8A16 g64")] if zen else [])
    if not zen and any(label.endswith(" + zentorch") for label in chosen):
        ap.error("the '+ zentorch' forms need --zentorch DIR")
    name = f"quant-smollm2-{args.rows}" + ("-zentorch" if zen else "")
    wls = {}
    for label in chosen:
        scheme, engine = FORMS[label.removesuffix(" + zentorch")]
        # same corpus and tokenizer, so the same prompt tokens for every form
        wls[label] = build(work / "quant" / f"{name}.{_slug(label)}", name, checkpoint(src, scheme, work), args.rows, 200, FIXED(64), engine)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in chosen}
    for rep in range(args.repeat):
        for label in chosen:
            slug = f"{_slug(label)}.{rep}"
            print(f"[quant] {label} (run {rep + 1}) ...", flush=True)
            r = run_system("vllm", wls[label].dir, out / "logs" / f"{name}.{slug}.json", out / "logs" / f"{name}.{slug}.log",
                           {"env": {**bind_all, **(zen if label.endswith(" + zentorch") else {})}})
            if not r.get("failed"):
                r["dtype"] = system_dtype(r)
            r = derive(r)
            runs[label].append(r)
            if r.get("failed"):
                print(f"[quant] {label}: FAILED, see {r['log']}", flush=True)
            else:
                print(f"[quant] {label}: {r['tok_s']:.1f} tok/s, {r['total_tok_s']:.0f} prompt + output tok/s, start-up "
                      f"{r['startup_seconds']:.1f}s, worker RSS {r['workers_peak_rss_mib']:.0f} MiB", flush=True)
    report = {"workload": name, "rows": args.rows, "cores": cores, "env": bind_all, "zentorch": args.zentorch or None,
              "models": {label: wls[label].model for label in chosen},
              "summary": {label: summarize(rs) for label, rs in runs.items()}, "runs": runs,
              "command": "python -m bench.quant " + shlex.join(argv if argv is not None else sys.argv[1:])}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    table = render(report)
    (out / f"{name}.md").write_text(table)
    print("\n" + table)
    return 0


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label)


def root_cause(log: str) -> list[str]:
    """The first error line of a failed run's log and the lines that continue it (vLLM's
    worker prints the reason a kernel was refused under it)."""
    import re

    lines = Path(log).read_text(errors="replace").splitlines() if Path(log).exists() else []
    strip = re.compile(r"^\(\w+ pid=\d+\) ERROR [\d-]+ [\d:]+ \[[^]]+\] ?")
    for i, line in enumerate(lines):
        if re.search(r"\b\w+(Error|Exception): ", line):
            out = [strip.sub("", line)]
            for more in lines[i + 1:i + 6]:
                more = strip.sub("", more)
                if not more.startswith(" "):
                    break
                out.append(more.strip())
            return out
    return []


def summarize(rs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rs if not r.get("failed")]
    if not ok:
        return {"failed": True, "error": root_cause(rs[-1]["log"]), "log_tail": rs[-1].get("log_tail")}
    keys = ("tok_s", "total_tok_s", "startup_seconds", "workers_peak_rss_mib", "driver_peak_rss_mib")
    return {"runs": len(ok), **{k: round(statistics.median(r[k] for r in ok), 2) for k in keys},
            **{f"{k}_all": [round(r[k], 2) for r in ok] for k in ("tok_s", "total_tok_s", "others_cpu_seconds")}}


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    ref = next((v for v in s.values() if not v.get("failed")), None)
    lines = [f"`{report['command']}` ({report['cores']} cores, {report['env']}; medians of each form's runs)", "",
             "| form | output tok/s (runs) | vs first | prompt + output tok/s | start-up s | worker peak RSS MiB | others' CPU s (runs) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, v in s.items():
        if v.get("failed"):
            lines.append(f"| {label} | failed: {' '.join(v['error'])[:300]} | | | | | |")
            continue
        runs = ", ".join(f"{x:.1f}" for x in v["tok_s_all"])
        lines.append(f"| {label} | {v['tok_s']:.1f} ({runs}) | {v['tok_s'] / ref['tok_s']:.2f}x | {v['total_tok_s']:.0f} | "
                     f"{v['startup_seconds']:.1f} | {v['workers_peak_rss_mib']:.0f} | {', '.join(f'{x:.0f}' for x in v['others_cpu_seconds_all'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
