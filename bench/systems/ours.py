"""Our pipeline, end to end: read corpus.jsonl, render prompts, infer on a Ray Data actor
pool, commit Parquet parts, publish. The run happens in this process (it is the driver)."""

from __future__ import annotations

import tempfile
import time
from typing import Any

from bench.common import Result, Workload, main_for


def job_spec(wl: Workload, output: str, **overrides: Any):
    from pipeline.config import JobSpec

    resources = {"actors": 1, "cpus_per_actor": 1, "max_actor_restarts": 0}
    resources.update(overrides.pop("resources", {}))
    engine = {**wl.engine, **overrides.pop("engine", {})}
    return JobSpec.model_validate(
        {
            "input": {"paths": [str(wl.corpus_path)], "format": "jsonl", "text_field": "text", "id_field": "id"},
            "output": {"path": output, **overrides.pop("output", {})},
            "tasks": wl.task_config(),
            "model": {"path": wl.model},
            "engine": engine,
            "resources": resources,
            **overrides,
        }
    )


def run(wl: Workload, **overrides: Any) -> Result:
    from pipeline.batch.runner import run as run_job

    out = tempfile.mkdtemp(prefix=f"bench-ours-{wl.name}-")
    spec = job_spec(wl, out, **overrides)
    t0 = time.time()
    summary = run_job(spec, force=True, interactive=False).to_json()
    total = time.time() - t0
    startup = summary["startup_seconds"]
    detail = {k: summary.get(k) for k in (
        "engine_load_seconds", "startup_breakdown", "prefix_cache_hit_rate", "commit_seconds", "publish_seconds", "tasks", "error_kinds",
        "actor_prepare_seconds", "actor_generate_seconds", "actor_batch_seconds", "engines", "flop_utilization",
        "tokens_per_second_after_startup")}
    # From the first engine ready to the last part committed, plus the publish: what raw
    # vLLM's generate() call stands for. The engines' stop and the actor pool's end after
    # the last commit are apart (raw vLLM's teardown is not timed either); so is the summary.
    run_s = summary["steady_seconds"] + (summary.get("publish_seconds") or 0.0)
    detail["run_seconds_including_startup"] = total
    detail["wind_down_seconds"] = round(total - startup - run_s, 3)
    detail["batch_rows"] = spec.engine.batch_rows
    detail["output"] = out
    return Result(system="ours", rows=summary["rows"], prompt_tokens=summary["prompt_tokens"],
                  output_tokens=summary["output_tokens"], startup_seconds=startup, run_seconds=run_s,
                  wall_seconds=0.0, detail=detail)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main_for(run)
