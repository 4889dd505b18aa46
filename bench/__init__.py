"""Side-by-side throughput benchmark: our pipeline vs raw vLLM, Ray Data LLM and transformers.

`python -m bench` (see bench/README.md). Each system runs in its own process on the same
workload folder (the same prompt token ids, model, sampling and engine settings).
"""
