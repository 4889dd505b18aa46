"""Hugging Face transformers: `model.generate` over left-padded batches in input order, greedy:
the naive baseline a user might pick instead of vLLM.

A padded batch runs until its longest row is done (or `max_tokens`): rows that stopped early
keep costing a slot at every later decode step, and every prompt is padded to the longest
prompt of its batch. That is the work continuous batching removes; `detail` reports how much
of it there was (`*_slots`, `*_padding_waste`).

Faithful to the other systems on what is generated:
- the workload's prompt token ids are fed as they are (no re-tokenizing, no added BOS);
- greedy (`do_sample=False`), `max_new_tokens = max_tokens`, `min_new_tokens = min_tokens`;
- the model's own `generation_config.json` sampling defaults (repetition penalty, ...) are NOT
  applied, as vLLM does not apply them to an explicit `SamplingParams`: generation uses a
  clean `GenerationConfig` carrying only the bos/eos/pad ids;
- generation stops on every EOS id the model declares (generation_config and tokenizer; there
  may be several) plus the workload's `stop_token_ids`, the stop ids vLLM uses;
- generated tokens are counted the way vLLM counts them: up to and including the first stop
  token of the row, or all of them if the row never stopped; what `generate` appends after
  that (padding of a finished row) is not counted.

Torch threads are left at torch's default: the naive baseline does not tune them (see
`detail["torch_threads"]`).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Optional

from bench.common import Result, Workload, main_for

# Rows per padded batch, in input order. FIELD-NOTES measured the transformers baseline
# with batches of 16; BENCH_HF_BATCH overrides it (or the `batch_size` option of `run`).
DEFAULT_BATCH = 16
BATCH = int(os.environ.get("BENCH_HF_BATCH") or DEFAULT_BATCH)

# vLLM SamplingParams keys that do not change which tokens greedy decoding produces.
_NO_EFFECT_WHEN_GREEDY = {"seed", "top_p", "top_k", "min_p", "logprobs", "prompt_logprobs", "detokenize",
                          "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
                          "output_kind"}
_HANDLED = {"temperature", "max_tokens", "min_tokens", "ignore_eos", "stop_token_ids", "n"}


def _check_sampling(s: dict[str, Any]) -> None:
    """Refuse sampling settings this greedy baseline would silently not honour."""
    if s.get("temperature", 1.0) >= 1e-5:  # vLLM's default temperature is 1.0; < 1e-5 is greedy there
        raise ValueError(f"transformers baseline is greedy only; workload has temperature={s.get('temperature')!r}")
    if s.get("n", 1) != 1:
        raise ValueError("transformers baseline generates one sequence per prompt (n=1)")
    other = {k: v for k, v in s.items() if k not in _HANDLED | _NO_EFFECT_WHEN_GREEDY and v not in (None, [], {})}
    if other:
        raise ValueError(f"transformers baseline does not implement these sampling settings: {other}")


def _ids(x) -> list[int]:
    if x is None:
        return []
    return [int(i) for i in (x if isinstance(x, (list, tuple)) else [x])]


def _thread_info(torch) -> dict[str, Any]:
    aff = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "intra_op": torch.get_num_threads(),  # torch's default: physical cores (cpuinfo) unless OMP/MKL_NUM_THREADS
        "inter_op": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "os_cpu_count": os.cpu_count(),
        "cpus_in_affinity": len(aff) if aff is not None else None,
        "set_by_us": False,
    }


def run(wl: Workload, batch_size: Optional[int] = None) -> Result:
    batch = int(batch_size or BATCH)
    if batch < 1:
        raise ValueError(f"batch size must be >= 1, got {batch}")
    s = dict(wl.sampling)
    _check_sampling(s)
    prompts = wl.prompts()

    ti = time.perf_counter()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from pipeline.engine.engine import resolve_dtype

    dtype_name = resolve_dtype(wl.engine_config(), "cpu")
    dtype = dtype_name if dtype_name == "auto" else getattr(torch, dtype_name)
    import_s = time.perf_counter() - ti

    # Start-up: tokenizer + model load (imports above are in wall_seconds and detail.import_seconds).
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(wl.model)
    model = AutoModelForCausalLM.from_pretrained(wl.model, dtype=dtype)
    model.eval()
    startup = time.perf_counter() - t0

    # Stop ids, as vLLM gathers them: the tokenizer's EOS, generation_config's EOS id(s), the
    # workload's stop_token_ids. ignore_eos drops the EOS ids but keeps stop_token_ids.
    model_gc = model.generation_config
    eos_ids = sorted(set(_ids(tok.eos_token_id)) | set(_ids(model_gc.eos_token_id)))
    stop_ids = sorted(set(_ids(s.get("stop_token_ids"))) | (set() if s.get("ignore_eos") else set(eos_ids)))
    if tok.pad_token_id is not None:
        pad = int(tok.pad_token_id)
    elif tok.eos_token_id is not None:
        pad = int(tok.eos_token_id)
    else:
        pad = eos_ids[0] if eos_ids else 0
    ignored_model_defaults = {k: v for k, v in model_gc.to_diff_dict().items()
                              if k not in ("bos_token_id", "eos_token_id", "pad_token_id", "transformers_version",
                                           "_from_model_config", "use_cache", "output_attentions",
                                           "output_hidden_states")}
    model.generation_config = GenerationConfig(
        bos_token_id=model_gc.bos_token_id, eos_token_id=stop_ids or None, pad_token_id=pad,
        do_sample=False, max_new_tokens=int(s["max_tokens"]),
        min_new_tokens=int(s["min_tokens"]) if s.get("min_tokens") else None,
    )
    stop = set(stop_ids)

    lens: list[int] = []
    stopped = 0  # rows that ended on a stop token (the rest ran to max_tokens)
    prompt_slots = decode_slots = batches = 0
    t1 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(prompts), batch):
            chunk = prompts[b : b + batch]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, p in enumerate(chunk):  # left padding: every row's prompt ends where generation starts
                ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, width - len(p) :] = 1
            out = model.generate(input_ids=ids, attention_mask=mask)
            new = out[:, width:]
            batches += 1
            prompt_slots += ids.numel()
            decode_slots += new.numel()  # rows in batch x the batch's longest generation
            for row in new.tolist():
                n = len(row)
                for j, t in enumerate(row):  # as vLLM counts: up to and including the first stop token
                    if t in stop:
                        n = j + 1
                        stopped += 1
                        break
                lens.append(n)
    run_s = time.perf_counter() - t1

    prompt_tokens = sum(len(p) for p in prompts)
    output_tokens = sum(lens)
    return Result(
        system="transformers",
        rows=len(lens),
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        startup_seconds=startup,
        run_seconds=run_s,
        wall_seconds=0.0,
        detail={
            "batch_size": batch,
            "batches": batches,
            "dtype": dtype_name,
            "import_seconds": round(import_s, 3),
            "torch_threads": _thread_info(torch),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "stop_token_ids": stop_ids,
            "pad_token_id": pad,
            "ignored_model_generation_defaults": ignored_model_defaults,
            # work actually computed, padding included
            "prompt_slots": prompt_slots,  # sum over batches: rows x longest prompt
            "prompt_padding_waste": round(1 - prompt_tokens / prompt_slots, 4) if prompt_slots else 0.0,
            "decode_slots": decode_slots,  # sum over batches: rows x longest generation
            "decode_padding_waste": round(1 - output_tokens / decode_slots, 4) if decode_slots else 0.0,
            "rows_stopped_on_eos": stopped,
            "rows_at_max_tokens": sum(1 for n in lens if n >= s["max_tokens"]),
            "output_tokens_min": min(lens) if lens else 0,
            "output_tokens_mean": round(statistics.mean(lens), 2) if lens else 0.0,
            "output_tokens_max": max(lens) if lens else 0,
        },
        note="greedy, left-padded batches in input order; tokens counted up to and including the first EOS",
    )


if __name__ == "__main__":
    main_for(run)
