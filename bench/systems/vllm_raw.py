"""Raw vLLM: one `vllm.LLM(...).generate(...)` over every prompt, in one process: the engine's
own ceiling. Same engine kwargs as our pipeline's engine (bench.common.Workload)."""

from __future__ import annotations

import time

from bench.common import Result, Workload, main_for


def run(wl: Workload) -> Result:
    prompts = wl.prompts()
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kw = wl.vllm_engine_kwargs()
    llm = LLM(**kw)
    startup = time.perf_counter() - t0
    params = SamplingParams(seed=wl.engine.get("seed", 0), **wl.sampling)
    t1 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    run_s = time.perf_counter() - t1
    lens = [len(o.outputs[0].token_ids) for o in outs]
    detail = {"engine_kwargs": {k: v for k, v in kw.items() if k != "model"},
              "output_tokens_min": min(lens), "output_tokens_max": max(lens)}
    detail.update(_prefix_cache(llm))
    return Result(system="vllm", rows=len(outs), prompt_tokens=sum(len(o.prompt_token_ids) for o in outs),
                  output_tokens=sum(lens), startup_seconds=startup, run_seconds=run_s, wall_seconds=0.0,
                  detail=detail)


def _prefix_cache(llm) -> dict:
    m = {getattr(x, "name", ""): getattr(x, "value", None) for x in llm.get_metrics()}
    q, h = m.get("vllm:prefix_cache_queries"), m.get("vllm:prefix_cache_hits")
    return {"prefix_cache_hit_rate": round(h / q, 4)} if q else {}


if __name__ == "__main__":
    main_for(run)
