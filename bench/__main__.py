"""`python -m bench`: every system on every workload, one after another, in one invocation.

    python -m bench                      # the full suite (about 75 minutes on 2 cores)
    python -m bench --quick              # small sizes: checks that every system runs (a few minutes)
    python -m bench --only tiny-fixed --systems ours,vllm

Each (workload, system) runs in a fresh process, watched from here: peak RSS of that
process (the driver) and the summed peak RSS of all its descendants (Ray's processes,
vLLM's engine processes: the workers). Writes results.json, chart.png and table.md into
--out, and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = {
    "ours": "bench.systems.ours",
    "vllm": "bench.systems.vllm_raw",
    "raydata_llm": "bench.systems.raydata_llm",
    "transformers": "bench.systems.transformers_hf",
}
PEERS = ("vllm", "raydata_llm", "transformers")
FIXED = lambda n: {"temperature": 0.0, "max_tokens": n, "min_tokens": n}  # noqa: E731
# Few output tokens and a one-line prompt: the memory workloads measure the driver, not the engine.
SHORT_PROMPT = {"system": "Summarize.", "user": "{text}"}


@dataclass
class Spec:
    name: str
    model: str  # "tiny" or "smollm2"
    rows: int
    words: int
    sampling: dict[str, Any]
    systems: tuple[str, ...]
    what: str
    prompt: Optional[dict[str, str]] = None
    engine: dict[str, Any] = field(default_factory=dict)
    # More runs on the same workload: label -> (system, options). Options are the system's
    # run(**options) keyword arguments, and "env": environment variables of its process.
    variants: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


def bind_all_env(cores: int) -> dict[str, str]:
    """Raw vLLM's compute threads bound to every core ("vllm bind=all"; vLLM's own default
    keeps one core per engine for its scheduler)."""
    return {"VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}" if cores > 1 else "0"}


def requests_per_row(workload: str) -> int:
    """Engine requests per input row: prefix-3tasks runs all three tasks over each row."""
    return 3 if workload == "prefix-3tasks" else 1


def binding_variants(cores: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """What the thread-binding targets compare: raw vLLM with every core bound (its best
    here: bench/README.md, "Threads and engines"), and ours with vLLM's own default binding
    (one core kept for its scheduler): the figure before our binding plan."""
    return {
        "vllm bind=all": ("vllm", {"env": bind_all_env(cores)}),
        "ours cpu_bind=auto": ("ours", {"engine": {"cpu_bind": "auto"}}),
    }


def suite(quick: bool) -> list[Spec]:
    q = quick
    bind = binding_variants(_physical_cores())
    return [
        Spec("tiny-fixed", "tiny", 300 if q else 3000, 60, FIXED(32), ("ours", *PEERS),
             "tiny random Llama, 32 tokens per row (overhead shows: the engine is fast)",
             variants={"vllm bind=all": bind["vllm bind=all"]}),
        Spec("smollm2-fixed", "smollm2", 32 if q else 256, 200, FIXED(64), ("ours", *PEERS),
             "SmolLM2-135M, exactly 64 tokens per row", variants=dict(bind)),
        Spec("smollm2-natural", "smollm2", 32 if q else 256, 200, {"temperature": 0.0, "max_tokens": 128},
             ("ours", *PEERS), "SmolLM2-135M, natural stopping at EOS, up to 128 tokens",
             variants={"vllm bind=all": bind["vllm bind=all"]}),
        Spec("memory-10k", "tiny", 1000 if q else 10_000, 8, FIXED(2), ("ours",),
             "driver memory vs corpus size (small)", prompt=SHORT_PROMPT),
        Spec("memory-100k", "tiny", 10_000 if q else 100_000, 8, FIXED(2), ("ours",),
             "driver memory vs corpus size (10x)", prompt=SHORT_PROMPT),
        Spec("prefix-3tasks", "smollm2", 16 if q else 64, 120, {}, ("ours",),
             "SmolLM2, all three tasks over one corpus: prefix-cache hit rate by KV block size",
             variants={"ours block_size=128": ("ours", {"engine": {"block_size": 128}})}),
    ]


def _physical_cores() -> int:
    from pipeline.engine.cpus import CpuTopology

    return CpuTopology.detect().physical_cores


# -- measuring a process tree -------------------------------------------------------------
class TreeMemory:
    """Peak RSS of a process and (summed) of its descendants, sampled every `every` s."""

    def __init__(self, pid: int, every: float = 0.25):
        self.pid, self.every = pid, every
        self.driver_peak = self.workers_peak = 0
        # vLLM process pid -> (role, OMP_NUM_THREADS): the worker computes, or the engine core
        # when vLLM runs the model there
        self.engine_procs: dict[int, tuple[str, int]] = {}
        # CPU seconds of this process tree (last seen per pid) and of the whole machine: what
        # other processes took meanwhile is the run's noise (other work on the same cores)
        self._tree_cpu: dict[int, float] = {}
        self._machine_cpu0 = self._machine_cpu1 = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._machine_cpu0 = _machine_busy()
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._machine_cpu1 = _machine_busy()

    @property
    def engine_threads(self) -> list[int]:
        """Compute threads of each engine (one figure per engine)."""
        workers = [t for role, t in self.engine_procs.values() if role == "Worker"]
        return sorted(workers or [t for role, t in self.engine_procs.values() if role == "EngineCore"])

    @property
    def others_cpu_seconds(self) -> float:
        """CPU seconds the machine spent outside this process tree while it ran (an upper
        bound: children that lived between two samples are not seen)."""
        return max(0.0, (self._machine_cpu1 - self._machine_cpu0) - sum(self._tree_cpu.values()))

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            try:
                driver = root.memory_info().rss
                t = root.cpu_times()
                self._tree_cpu[root.pid] = t.user + t.system
                workers = 0
                for c in root.children(recursive=True):
                    try:
                        workers += c.memory_info().rss
                        t = c.cpu_times()
                        self._tree_cpu[c.pid] = t.user + t.system
                        if c.pid not in self.engine_procs:
                            title = f"{c.name()} {' '.join(c.cmdline())}"
                            role = "Worker" if "VLLM::Worker" in title else "EngineCore" if "VLLM::EngineCore" in title else None
                            threads = c.environ().get("OMP_NUM_THREADS") if role else None
                            if threads:
                                self.engine_procs[c.pid] = (role, int(threads))
                    except (psutil.Error, ValueError):
                        pass
                self.driver_peak = max(self.driver_peak, driver)
                self.workers_peak = max(self.workers_peak, workers)
            except psutil.Error:
                pass
            self._stop.wait(self.every)


def _machine_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def run_system(system: str, wl_dir: Path, out: Path, log: Path, options: Optional[dict] = None) -> dict[str, Any]:
    options = dict(options or {})
    extra_env = options.pop("env", {})
    cmd = [sys.executable, "-m", SYSTEMS[system], str(wl_dir), str(out)]
    if options:
        cmd.append(json.dumps(options))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra_env}
    t0 = time.perf_counter()
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        with TreeMemory(proc.pid) as mem:
            rc = proc.wait()
    elapsed = time.perf_counter() - t0
    if rc != 0 or not out.exists():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        return {"system": system, "failed": True, "exit_code": rc, "log": str(log), "log_tail": tail}
    r = json.loads(out.read_text())
    r.update(process_seconds=elapsed, driver_peak_rss_mib=mem.driver_peak / 2**20,
             workers_peak_rss_mib=mem.workers_peak / 2**20, log=str(log), env=extra_env,
             engine_threads=mem.engine_threads, others_cpu_seconds=round(mem.others_cpu_seconds, 1))
    return r


def derive(r: dict[str, Any], flops: Optional[Any] = None, requests_per_row: int = 1) -> dict[str, Any]:
    """Throughput figures of one result; with `flops` (pipeline.engine.flops.ModelFlops), the
    model FLOPs per second after start-up and their share of the measured matrix peak."""
    if r.get("failed"):
        return r
    total = r.get("process_seconds") or r["wall_seconds"]
    r["tok_s"] = r["output_tokens"] / r["run_seconds"] if r["run_seconds"] else None
    r["total_tok_s"] = (r["prompt_tokens"] + r["output_tokens"]) / r["run_seconds"] if r["run_seconds"] else None
    r["tok_s_with_startup"] = r["output_tokens"] / total
    r["rows_s"] = r["rows"] / r["run_seconds"] if r["run_seconds"] else None
    if flops is not None and r["run_seconds"]:
        from pipeline.engine.flops import utilization

        engines = [(r.get("dtype") or "float32", t) for t in r.get("engine_threads") or []]
        hit = (r.get("detail") or {}).get("prefix_cache_hit_rate")
        u = utilization(flops, r["prompt_tokens"], r["output_tokens"], r["rows"] * requests_per_row, r["run_seconds"], engines, hit)
        r["gflops_s"], r["peak_gflops"], r["mfu"] = u.gflops_per_second, u.peak_gflops, u.mfu
    return r


def vllm_threads(r: dict[str, Any], cores: int) -> list[int]:
    """Compute threads of a raw-vLLM run whose worker was not seen (its model may run in the
    engine-core process, with no OMP_NUM_THREADS of its own): from the binding it ran with,
    as vLLM derives them (vllm/utils/ompmultiprocessing.py: a list binds one thread per
    core; 'auto' keeps one core per engine for the scheduler)."""
    from pipeline.engine.cpus import parse_cpu_list

    bind = (r.get("env") or {}).get("VLLM_CPU_OMP_THREADS_BIND", "auto")
    if bind == "auto":
        return [max(1, cores - 1)]
    return [] if bind == "nobind" else [len(parse_cpu_list(bind))]


def system_dtype(r: dict[str, Any]) -> Optional[str]:
    """The dtype a system ran in, from what it reported."""
    d = r.get("detail") or {}
    for e in d.get("engines") or []:
        if e.get("dtype"):
            return e["dtype"]
    return (d.get("engine_kwargs") or {}).get("dtype") or d.get("dtype")


def measure_peaks(cores: int) -> dict[str, float]:
    """The machine's matrix peak per (dtype, threads) the systems may use, cached for run
    summaries (pipeline.engine.flops)."""
    from pipeline.engine.cpus import CpuTopology
    from pipeline.engine.engine import cpu_has_native_bf16
    from pipeline.engine.flops import measure_peak

    one_per_core = [c for cpus in CpuTopology.detect().nodes().values() for c in cpus]
    out = {}
    for dtype in ["float32"] + (["bfloat16"] if cpu_has_native_bf16() else []):
        one = None
        for threads in sorted({1, max(1, cores - 1), cores}):
            g = measure_peak(dtype, one_per_core[:threads])
            if one is not None and g < 0.75 * threads * one:
                # cores that scale this badly were shared with another process: measure again
                print(f"[bench] matrix peak {dtype}, {threads} thread(s): {g:.1f} GFLOP/s is under 0.75x "
                      f"{threads} x {one:.1f} (one thread); measuring again", flush=True)
                g = measure_peak(dtype, one_per_core[:threads])
            one = g if threads == 1 else one
            out[f"{dtype} x{threads}"] = round(g, 1)
            print(f"[bench] matrix peak {dtype}, {threads} thread(s): {g:.1f} GFLOP/s", flush=True)
    return out


# -- the suite ---------------------------------------------------------------------------
def models(cache: Path) -> dict[str, str]:
    from pipeline.engine import build_tiny_model, resolve_model

    return {"tiny": str(build_tiny_model(cache / "tiny-model")), "smollm2": str(resolve_model(None))}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check that everything runs")
    ap.add_argument("--only", default="", help="comma-separated workload names")
    ap.add_argument("--systems", default="", help="comma-separated systems (default: each workload's)")
    ap.add_argument("--rows", default="", help="row counts to override, e.g. smollm2-natural=96,memory-100k=50000")
    ap.add_argument("--peak", action="store_true", help="only measure the matrix peaks (cached for run summaries)")
    ap.add_argument("--rederive", metavar="DIR", help="recompute a results folder's MFU and checks with the matrix peaks "
                    "cached now (after `--peak`: a peak measured while another process ran), and rewrite its table")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "latest"), help="results folder")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "pipeline-bench"),
                    help="scratch folder for workloads and models")
    args = ap.parse_args(argv)

    from bench.workloads import build
    from pipeline.engine.flops import ModelFlops

    cores = _physical_cores()
    if args.peak:
        measure_peaks(cores)
        return 0
    if args.rederive:
        return rederive(Path(args.rederive), Path(args.work))
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    pick = {s for s in args.systems.split(",") if s}
    rows = {k: int(v) for k, v in (kv.split("=", 1) for kv in args.rows.split(",") if kv)}
    paths = models(work)
    report: dict[str, Any] = {"machine": machine(), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
                              "quick": args.quick, "workloads": {}}
    # Measured once per invocation, before any system runs (nothing else on the cores).
    report["matrix_peaks_gflops"] = measure_peaks(cores)
    for spec in suite(args.quick):
        if only and spec.name not in only:
            continue
        spec.rows = rows.get(spec.name, spec.rows)
        wl_dir = work / ("quick" if args.quick else "full") / spec.name
        build(wl_dir, spec.name, paths[spec.model], spec.rows, spec.words, spec.sampling or {"max_tokens": 64},
                   engine=spec.engine, prompt=spec.prompt)
        entry = {"what": spec.what, "rows": spec.rows, "model": spec.model, "sampling": spec.sampling, "results": {}}
        runs: list[tuple[str, str, Optional[dict]]] = [(s, s, None) for s in spec.systems if not pick or s in pick]
        runs += [(s, label, opt) for label, (s, opt) in spec.variants.items() if not pick or s in pick or label in pick]
        per_row = requests_per_row(spec.name)
        # All three tasks: our CPU default block size (32), then vLLM's (128). Translation
        # truncates, as when these figures were first taken (split would make its 64-token
        # answers several requests per text).
        if spec.name == "prefix-3tasks":
            three = {"tasks": {"sentiment": {}, "summarization": {"max_words": 30}, "translation": {"target_lang": "French", "sampling": {"max_tokens": 64}, "context_policy": "truncate"}}}
            runs = [(s, label, {**three, **(opt or {})}) for s, label, opt in runs]
        flops = ModelFlops.from_model(paths[spec.model])
        for system, label, options in runs:
            print(f"[bench] {spec.name}: {label} ...", flush=True)
            slug = label.replace(" ", "_").replace("=", "")
            r = run_system(system, wl_dir, out / "logs" / f"{spec.name}.{slug}.json", out / "logs" / f"{spec.name}.{slug}.log", options)
            if not r.get("failed"):
                r["dtype"] = system_dtype(r)
                if system == "vllm" and not r.get("engine_threads"):
                    r["engine_threads"] = vllm_threads(r, cores)
                if system == "transformers":  # in-process torch: its intra-op threads
                    r["engine_threads"] = [((r.get("detail") or {}).get("torch_threads") or {}).get("intra_op") or cores]
            r = derive(r, flops, per_row)
            entry["results"][label] = r
            mfu = f", MFU {r['mfu']:.2f}" if r.get("mfu") is not None else ""
            print(f"[bench] {spec.name}: {label}: " + (f"FAILED (exit {r['exit_code']}), see {r['log']}" if r.get("failed") else
                  f"{r['tok_s']:.1f} tok/s after start-up ({r['total_tok_s']:.0f} prompt + output){mfu}, "
                  f"{r['tok_s_with_startup']:.1f} with it, start-up {r['startup_seconds']:.1f}s"), flush=True)
        entry["ratios"] = ratios(entry["results"])
        report["workloads"][spec.name] = entry
        (out / "results.json").write_text(json.dumps(report, indent=2))  # after each workload: partial results survive
    report["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report["checks"] = checks(report)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    chart(report, out / "chart.png")
    table = render_table(report)
    (out / "table.md").write_text(table)
    print("\n" + table)
    return 0


def rederive(out: Path, work: Path) -> int:
    """Figures of `out/results.json` derived again over the peaks cached now; the runs' own
    measurements (tokens, seconds, RSS) are kept as they were."""
    from pipeline.engine.flops import ModelFlops, known_peak

    report = json.loads((out / "results.json").read_text())
    peaks = {}
    for key in report.get("matrix_peaks_gflops") or {}:
        dtype, threads = key.split(" x")
        peaks[key] = known_peak(dtype, int(threads)) or report["matrix_peaks_gflops"][key]
    report.setdefault("matrix_peaks_gflops_at_run", report.get("matrix_peaks_gflops"))  # a second rederive keeps the first's
    report["matrix_peaks_gflops"] = peaks
    paths = models(work)
    specs = {s.name: s for s in suite(report.get("quick", False))}
    for name, entry in report["workloads"].items():
        flops = ModelFlops.from_model(paths[specs[name].model])
        per_row = requests_per_row(name)
        entry["results"] = {label: derive(r, flops, per_row) for label, r in entry["results"].items()}
        entry["ratios"] = ratios(entry["results"])
    report["checks"] = checks(report)
    report["rederived"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    (out / "results.json").write_text(json.dumps(report, indent=2))
    chart(report, out / "chart.png")
    table = render_table(report)
    (out / "table.md").write_text(table)
    print(table)
    return 0


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ours over every other run of the workload (peers and variants)."""
    ours = results.get("ours")
    out: dict[str, dict[str, float]] = {}
    if not ours or ours.get("failed"):
        return out
    for name, r in results.items():
        if name == "ours" or r.get("failed"):
            continue
        out[name] = {
            "tok_s": ours["tok_s"] / r["tok_s"],
            "tok_s_with_startup": ours["tok_s_with_startup"] / r["tok_s_with_startup"],
            "process_seconds": ours["process_seconds"] / r["process_seconds"],
            "startup_seconds": ours["startup_seconds"] / r["startup_seconds"] if r.get("startup_seconds") else None,
        }
    return out


def best_vllm(results: dict[str, dict[str, Any]]) -> Optional[str]:
    """The raw-vLLM run with the highest tok/s (over its thread bindings)."""
    runs = [(r["tok_s"], k) for k, r in results.items() if k.split(" ")[0] == "vllm" and not r.get("failed")]
    return max(runs)[1] if runs else None


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issues' targets, each with the figure measured in this run."""
    w = report["workloads"]
    out: list[dict[str, Any]] = []

    def ratio(workload: str, peer: Optional[str], key: str) -> Optional[float]:
        return w.get(workload, {}).get("ratios", {}).get(peer or "", {}).get(key)

    def add(what: str, value: Optional[float], ok: Optional[bool]) -> None:
        out.append({"target": what, "measured": None if value is None else round(value, 3), "met": ok})

    def at_least(what: str, value: Optional[float], bound: float) -> None:
        add(what, value, None if value is None else value >= bound)

    def best(workload: str) -> Optional[str]:
        return best_vllm(w.get(workload, {}).get("results", {}))

    at_least("tiny: ours >= 0.95x raw vLLM (best binding) tok/s, start-up excluded", ratio("tiny-fixed", best("tiny-fixed"), "tok_s"), 0.95)
    at_least("tiny: ours >= 1.3x Ray Data LLM tok/s, start-up excluded", ratio("tiny-fixed", "raydata_llm", "tok_s"), 1.3)
    v = ratio("tiny-fixed", best("tiny-fixed"), "process_seconds")
    add("tiny: ours' whole run within 1.15x raw vLLM's, start-up included", v, None if v is None else v <= 1.15)
    at_least("smollm2-fixed: ours >= 1.5x ours with vLLM's default binding, start-up excluded",
             ratio("smollm2-fixed", "ours cpu_bind=auto", "tok_s"), 1.5)
    for wl in ("smollm2-fixed", "smollm2-natural"):
        at_least(f"{wl}: ours >= 0.95x raw vLLM (best binding) tok/s, start-up excluded", ratio(wl, best(wl), "tok_s"), 0.95)
    mfu = w.get("smollm2-fixed", {}).get("results", {}).get("ours", {}).get("mfu")
    at_least("smollm2-fixed: ours' model FLOP utilization >= 0.60 of the measured matrix peak", mfu, 0.60)
    v = ratio("smollm2-fixed", best("smollm2-fixed"), "startup_seconds")
    add("smollm2: ours' start-up (Ray, actor, engine ready) within 1.2x raw vLLM's engine load", v, None if v is None else v <= 1.2)
    for wl in ("smollm2-fixed", "smollm2-natural"):
        at_least(f"{wl}: ours >= 1.3x Ray Data LLM tok/s", ratio(wl, "raydata_llm", "tok_s"), 1.3)
    at_least("smollm2-natural: ours >= 1.5x transformers tok/s", ratio("smollm2-natural", "transformers", "tok_s"), 1.5)
    small, big = (w.get(k, {}).get("results", {}).get("ours", {}) for k in ("memory-10k", "memory-100k"))
    if small.get("driver_peak_rss_mib") and big.get("driver_peak_rss_mib"):
        v = big["driver_peak_rss_mib"] / small["driver_peak_rss_mib"]
        add(f"driver peak RSS, {big['rows']:,} rows / {small['rows']:,} rows <= 1.2", v, v <= 1.2)
    return out


def machine() -> dict[str, Any]:
    import psutil

    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    from pipeline.engine.engine import cpu_has_native_bf16

    versions = {}
    for mod in ("vllm", "ray", "torch", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = None
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "native_bf16": cpu_has_native_bf16(), "python": platform.python_version(), "versions": versions}


def render_table(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"Benchmark {report['started']} on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB); "
             f"vLLM {m['versions'].get('vllm')}, Ray {m['versions'].get('ray')}; command: `{report['command']}`", ""]
    peaks = report.get("matrix_peaks_gflops")
    if peaks:
        lines += ["Measured matrix peaks (torch, square 2048 product, GFLOP/s): "
                  + ", ".join(f"{k} threads {v:,.0f}" for k, v in peaks.items()), ""]
    at_run = report.get("matrix_peaks_gflops_at_run")
    if report.get("rederived") and at_run and at_run != peaks:
        lines += [f"MFU and checks derived again on {report['rederived']} over the peaks above (`python -m bench "
                  "--rederive`); the invocation had measured " + ", ".join(f"{k} {v:,.0f}" for k, v in at_run.items())
                  + ", disturbed by another process.", ""]
    lines.append("| workload | system | rows | output tokens | start-up s | run s | output tok/s after start-up | prompt + output tok/s | MFU | tok/s with start-up | rows/s | driver peak MiB | workers peak MiB | ours ÷ this (after start-up / with) |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, e in report["workloads"].items():
        for label, r in e["results"].items():
            if r.get("failed"):
                lines.append(f"| {name} | {label} | failed (exit {r.get('exit_code')}) | | | | | | | | | | | |")
                continue
            rat = e.get("ratios", {}).get(label)
            rs = f"{rat['tok_s']:.2f} / {rat['tok_s_with_startup']:.2f}" if rat else ""
            extra = ""
            hr = (r.get("detail") or {}).get("prefix_cache_hit_rate")
            if hr is not None and name.startswith("prefix"):
                extra = f" (prefix cache {hr:.1%})"
            lines.append(
                f"| {name} | {label}{extra} | {r['rows']:,} | {r['output_tokens']:,} | {r['startup_seconds']:.1f} | {r['run_seconds']:.1f} | "
                f"{r['tok_s']:.1f} | {r.get('total_tok_s') or 0:.0f} | {_mfu(r)} | {r['tok_s_with_startup']:.1f} | {r['rows_s']:.1f} | "
                f"{r['driver_peak_rss_mib']:.0f} | {r['workers_peak_rss_mib']:.0f} | {rs} |"
            )
    if report.get("checks"):
        lines += ["", "| target | measured | met |", "|---|---:|---|"]
        for c in report["checks"]:
            met = {True: "yes", False: "**no**", None: "not measured"}[c["met"]]
            lines.append(f"| {c['target']} | {c['measured'] if c['measured'] is not None else ''} | {met} |")
    return "\n".join(lines) + "\n"


def _mfu(r: dict[str, Any]) -> str:
    """MFU with what it is over: '0.62 (bf16 x2)'."""
    if r.get("mfu") is None:
        return ""
    dt = {"float32": "fp32", "bfloat16": "bf16"}.get(r.get("dtype") or "", r.get("dtype") or "?")
    threads = "+".join(str(t) for t in r.get("engine_threads") or [])
    return f"{r['mfu']:.2f} ({dt} x{threads})"


def chart(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[bench] matplotlib is not installed (pip install -e .[bench]): no chart", file=sys.stderr)
        return
    names = [n for n, e in report["workloads"].items() if len([r for r in e["results"].values() if not r.get("failed")]) > 1
             and not n.startswith(("memory", "prefix"))]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        res = {k: r for k, r in report["workloads"][name]["results"].items() if not r.get("failed")}
        xs = range(len(res))
        ax.bar([x - 0.2 for x in xs], [r["tok_s"] for r in res.values()], 0.4, label="after start-up")
        ax.bar([x + 0.2 for x in xs], [r["tok_s_with_startup"] for r in res.values()], 0.4, label="with start-up")
        ax.set_xticks(list(xs), list(res), rotation=20)
        ax.set_title(name)
        ax.set_ylabel("generated tokens/s")
    axes[0][0].legend()
    fig.suptitle(f"{report['machine']['cpu']} ({report['machine']['cores']} cores), {report['started'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
