"""`python -m bench.second_job`: start-up of a job with Ray started in-process, then of jobs
joining a running Ray head one after another (what a warm engine would have to beat).

    python -m bench.second_job                      # the sample job, sentiment only, 3 joins
    python -m bench.second_job --spec jobs/sample.yaml --tasks sentiment --runs 3

Starts its own head (`ray start --head`) and stops it at the end; prints each run's start-up
and its parts (`startup_breakdown` of the run summary).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional


def _run(spec: str, tasks: str, out: Path, address: Optional[str]) -> dict:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", spec, "--tasks", tasks, "--output", str(out)]
    if address:
        cmd += ["--address", address]
    with open(out.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads((out / "summary.json").read_text())


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.second_job", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="jobs/sample.yaml")
    ap.add_argument("--tasks", default="sentiment")
    ap.add_argument("--runs", type=int, default=3, help="jobs joining the running head")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="pipeline-second-job-"))
    rows = [("in-process Ray", _run(args.spec, args.tasks, work / "cold", None))]
    ray = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    subprocess.run([ray, "start", "--head", "--disable-usage-stats", "--include-dashboard=false"],
                   check=True, capture_output=True)
    try:
        for i in range(args.runs):
            rows.append((f"on a running head, {i + 1}", _run(args.spec, args.tasks, work / f"join-{i + 1}", "auto")))
    finally:
        subprocess.run([ray, "stop"], capture_output=True)
    print("| run | start-up s | plan | Ray | until the actor | actor to engine ready | after start-up s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, s in rows:
        b = s.get("startup_breakdown") or {}
        print(f"| {label} | {s.get('startup_seconds', 0):.1f} | " + " | ".join(
            f"{b.get(k, 0):.1f}" for k in ("plan", "ray_init", "until_actor", "actor_to_engine_ready"))
            + f" | {s.get('steady_seconds', 0):.1f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
