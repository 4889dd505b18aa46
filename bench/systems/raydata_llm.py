"""Ray Data LLM: `ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))`, the peer a
Ray user would pick for offline batch inference.

Same inputs as every system: the exact prompt token ids go in as the `tokenized_prompt`
column, so the chat-template and tokenize stages are switched off (`chat_template_stage=False`,
`tokenize_stage=False`: the processor then has only the vLLM engine stage and the
detokenize stage); the engine gets our engine kwargs (`Workload.vllm_engine_kwargs()`, minus
`model`) and every row the workload's sampling (greedy, fixed seed). Ray Data LLM's own
defaults otherwise: batch_size 32, max_concurrent_batches 8, detokenize stage on (as users
get it), engine-metrics export on. One engine (concurrency=1).

On the CPU it needs `placement_group_config={"bundle_per_worker": {"CPU": 1}}` (else the
engine actor asks for a GPU and waits forever) and more logical CPUs than the 2 cores for
its actor pools (`ray.init(num_cpus=8)`).

Start-up vs run. Ray Data is lazy and the engine loads inside the stage's actor, so there is
no call that returns "engine ready". vLLM stamps every request with its wall-clock arrival
time (`RequestOutput.metrics.arrival_time`, surfaced by Ray Data LLM in the `metrics`
column): the earliest of those is when the loaded engine got its first request. So
  startup_seconds = process's `run` start (before `import ray`) -> first request's arrival,
  run_seconds     = first request's arrival -> last result row in the driver's hand,
and `detail["run_seconds_including_startup"]` is the whole thing. (Arrival times are
`time.time()` in the actor; the driver maps them onto its `time.perf_counter` with one
offset taken at start: same host, same clock.) A driver-side-only cross-check (first output
block's arrival minus the longest per-row engine time in it, `time_taken_llm`) goes to detail:
an upper bound, since Ray's later stages and transfers delay the block.
"""

from __future__ import annotations

import time

from bench.common import Result, Workload, main_for

RAY_NUM_CPUS = 8


def _row_hash(ids) -> int:
    return hash(tuple(int(x) for x in ids))  # int tuples hash the same in every process


def run(wl: Workload) -> Result:
    prompts = wl.prompts()
    t0 = time.perf_counter()
    wall_minus_perf = time.time() - time.perf_counter()

    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    ray.init(num_cpus=RAY_NUM_CPUS, include_dashboard=False, logging_level="WARNING")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        kw = wl.vllm_engine_kwargs()
        model = kw.pop("model")
        config = vLLMEngineProcessorConfig(
            model_source=model,
            engine_kwargs=kw,
            concurrency=1,
            placement_group_config={"bundle_per_worker": {"CPU": 1}},
            chat_template_stage=False,
            tokenize_stage=False,
        )
        sampling = {"seed": wl.engine.get("seed", 0), **wl.sampling}

        def post(row):
            m = row.get("metrics") or {}
            return {
                "i": row["i"],
                "n_out": len(row["generated_tokens"]),
                "n_gen": row["num_generated_tokens"],
                "n_in": row["num_input_tokens"],
                "h_in": _row_hash(row["prompt_token_ids"]),
                "arrival": float(m.get("arrival_time") or 0.0),
                "t_llm": float(row.get("time_taken_llm") or 0.0),
                "last_tok": float(m.get("last_token_ts") or 0.0),  # engine core, time.monotonic()
            }

        processor = build_processor(
            config,
            preprocess=lambda row: {"sampling_params": sampling},
            postprocess=post,
        )
        stages = processor.list_stage_names()
        ds = processor(ray.data.from_items([{"i": i, "tokenized_prompt": p} for i, p in enumerate(prompts)]))

        first_at = None
        first_gen = 0.0
        cols: dict[str, list] = {k: [] for k in ("i", "n_out", "n_gen", "n_in", "h_in", "arrival", "t_llm", "last_tok")}
        t_exec = time.perf_counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if not len(batch["i"]):
                continue
            if first_at is None:
                first_at = time.perf_counter()
                first_gen = float(batch["t_llm"].max())
            for k in cols:
                cols[k].extend(batch[k].tolist())
        t_end = time.perf_counter()
    finally:
        ray.shutdown()

    rows = len(cols["i"])
    if rows != len(prompts) or sorted(cols["i"]) != list(range(len(prompts))):
        raise RuntimeError(f"Ray Data LLM returned {rows} rows ({len(set(cols['i']))} distinct) "
                           f"for {len(prompts)} prompts")
    bad = [i for i, h in zip(cols["i"], cols["h_in"]) if h != _row_hash(prompts[i])]
    if bad:
        raise RuntimeError(f"{len(bad)} rows reached the engine with other prompt token ids (e.g. row {bad[0]})")
    if cols["n_out"] != cols["n_gen"]:
        raise RuntimeError("num_generated_tokens disagrees with len(generated_tokens)")

    arrivals = [a for a in cols["arrival"] if a > 0]
    if not arrivals:
        raise RuntimeError("no per-request arrival time in Ray Data LLM's `metrics` column "
                           "(vLLM's disable_log_stats on?): cannot separate start-up")
    served_from = min(arrivals) - wall_minus_perf  # first request reached the loaded engine
    last_arrival = max(arrivals) - wall_minus_perf
    # vLLM's engine-core stamps are time.monotonic(): the same clock as perf_counter on Linux.
    same_clock = time.get_clock_info("monotonic").implementation == time.get_clock_info("perf_counter").implementation
    engine_done = max(cols["last_tok"]) if same_clock and max(cols["last_tok"]) > 0 else None
    cross_check = (first_at or t_end) - first_gen
    lens = cols["n_out"]
    return Result(
        system="raydata_llm", rows=rows, prompt_tokens=sum(cols["n_in"]), output_tokens=sum(lens),
        startup_seconds=served_from - t0, run_seconds=t_end - served_from, wall_seconds=0.0,
        detail={
            "run_seconds_including_startup": t_end - t0,
            "batch_size": config.batch_size,
            "max_concurrent_batches": config.max_concurrent_batches,
            "max_tasks_in_flight_per_actor": config.max_tasks_in_flight_per_actor,  # None: Ray's default (2 x 8)
            "max_pending_requests": config.max_pending_requests,  # None: ceil(1.1 x max_num_seqs)
            "concurrency": config.concurrency,
            "placement_group_config": {"bundle_per_worker": {"CPU": 1}},
            "ray_init": {"num_cpus": RAY_NUM_CPUS, "include_dashboard": False},
            "progress_bars": False,
            "log_engine_metrics": config.log_engine_metrics,
            "stages": stages,
            "engine_kwargs": kw,
            "sampling_params": sampling,
            "output_tokens_min": min(lens), "output_tokens_max": max(lens),
            "first_result_seconds": (first_at or t_end) - t0,
            # driver-side only: first output block's arrival minus its longest per-row engine time;
            # Ray's stage/transfer delays make this an upper bound of startup_seconds
            "startup_upper_bound_from_first_block_seconds": cross_check - t0,
            "requests_arrival_span_seconds": last_arrival - served_from,
            # last token generated by the engine -> last row in the driver: Ray Data's tail
            "engine_last_token_to_driver_seconds": None if engine_done is None else t_end - engine_done,
            "iteration_seconds": t_end - t_exec,
        },
        note="tokenized_prompt input: chat-template and tokenize stages off; detokenize stage on "
             "(Ray's default). startup = until the first request reached the loaded engine "
             "(vLLM's per-request arrival_time); run = from then to the last row in the driver.",
    )


if __name__ == "__main__":
    main_for(run)
