"""`python -m bench.proc_cpu`: which processes took the CPU while an engine computed.

    python -m bench.proc_cpu --seconds 180 --out /tmp/cpu.json &   # sample while a benchmark runs
    python -m bench.threads --rows 256 --only "vllm bind=all,ours (planned)"
    python -m bench.proc_cpu --report /tmp/cpu.json               # per engine run: CPU by process

Samples every process's CPU time (/proc/PID/stat, user + system) every few seconds: two
reads of /proc per sample, nothing per thread, so the sampler itself stays near 0.1% of a
core. The report finds each span in which a vLLM worker process (`VLLM::Worker`) was
computing (at least half a core), drops its first and last sample (ramp-up, wind-down),
and prints the CPU-seconds each process took in that steady window next to the worker's
share of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Optional

WORKER = "VLLM::Worker"


def snapshot() -> dict[str, tuple[str, float]]:
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[str, float]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[pid] = (cmd or stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / hz)
    return out


def sample(seconds: float, every: float) -> list[tuple[float, dict[str, tuple[str, float]]]]:
    t0, snaps = time.monotonic(), []
    while time.monotonic() - t0 < seconds:
        snaps.append((round(time.monotonic() - t0, 2), snapshot()))
        time.sleep(every)
    return snaps


def _worker_cpu(snap: dict[str, tuple[str, float]]) -> float:
    return sum(cpu for cmd, cpu in snap.values() if cmd.startswith(WORKER))


def windows(snaps: list) -> list[tuple[int, int]]:
    """(first, last) sample indexes of each steady span of a busy vLLM worker."""
    busy = []
    for (t1, a), (t2, b) in zip(snaps, snaps[1:]):
        busy.append(_worker_cpu(b) - _worker_cpu(a) >= 0.5 * (t2 - t1))
    spans, start = [], None
    for i, on in enumerate(busy + [False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            if i - start >= 3:  # at least three intervals: one left after dropping the edges
                spans.append((start + 1, i - 1))
            start = None
    return spans


def report(snaps: list, cores: int, top: int = 14) -> str:
    lines = []
    for i, j in windows(snaps):
        (t1, a), (t2, b) = snaps[i], snaps[j]
        took = []
        for pid, (cmd, cpu) in b.items():
            d = cpu - a.get(pid, (cmd, 0.0))[1]
            if d > 0.01:
                took.append((d, pid, cmd))
        took.sort(reverse=True)
        span = t2 - t1
        worker = sum(d for d, _, cmd in took if cmd.startswith(WORKER))
        lines.append(f"steady window {t1:.0f}-{t2:.0f} s: {sum(d for d, _, _ in took):.1f} CPU-s taken of "
                     f"{cores * span:.0f}; the vLLM worker {worker:.1f} ({worker / (cores * span):.0%} of the machine)")
        lines += [f"  {d:7.2f}  {d / span:6.1%} of a core  {pid:>7}  {cmd}" for d, pid, cmd in took[:top]]
    return "\n".join(lines) or "no span with a busy vLLM worker"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.proc_cpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--out", help="write the samples here (JSON)")
    ap.add_argument("--report", help="print the steady windows of a samples file")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    if args.report:
        with open(args.report) as f:
            snaps: Any = json.load(f)
    else:
        snaps = sample(args.seconds, args.every)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(snaps, f)
    print(report(snaps, cores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
