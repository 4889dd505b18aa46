"""`python -m bench.quant_build SRC OUT --scheme W8A8`: a compressed-tensors checkpoint of a
local HF model, data-free (round-to-nearest), for vLLM's CPU kernels.

    W8A8   int8 weights per output channel + int8 activations per token, computed at run time
           (vLLM: CompressedTensorsW8A8Int8 -> oneDNN int8 GEMM on CPUs without AMX)
    W4A16  4-bit weights in groups of --group-size, bf16 activations
           (vLLM: CompressedTensorsWNA16 -> CPUWNA16LinearKernel); the analogue of the GGUF Q4_1 file
    W8A16  the same with 8-bit weights
    W8A8-keep-down  W8A8 with the MLPs' down projections left unquantized (their inputs, after
           the gated activation, are where a small model's activation outliers sit)

No calibration data: the weight scales come from each channel's (group's) own range, and the W8A8
activation scales are computed per token at run time. The compression (packing, config.json's
quantization_config) is compressed-tensors' own (the library vLLM reads it with); only the
scale computation (a min / max per channel or group, `calculate_qparams`) is done here, the one
step llm-compressor would add (it pins transformers and compressed-tensors versions other than
vLLM's, so it is not installed). The tied lm_head / embeddings stay in the source dtype.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def build(src: Path, out: Path, scheme: str = "W8A8", group_size: int = 64, dtype: str = "bfloat16") -> Path:
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStrategy,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils import calculate_qparams
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype))
    ignore = ["lm_head"]
    if scheme.endswith("-keep-down"):
        scheme, ignore = scheme.removesuffix("-keep-down"), ignore + ["re:.*down_proj$"]
    if scheme in ("W4A16", "W8A16"):
        # the presets' groups of 128 do not divide SmolLM2's hidden size (576); Q4_1 uses 32
        qs = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
            num_bits=4 if scheme == "W4A16" else 8, strategy=QuantizationStrategy.GROUP, group_size=group_size, symmetric=True))
    else:
        qs = preset_name_to_scheme(scheme, ["Linear"])
    config = QuantizationConfig(config_groups={"group_0": qs}, ignore=ignore)
    apply_quantization_config(model, config)

    with torch.no_grad():
        for name, module in model.named_modules():
            s = getattr(module, "quantization_scheme", None)
            if s is None or s.weights is None:
                continue
            w = module.weight.float()
            if s.weights.strategy == QuantizationStrategy.GROUP:
                g = s.weights.group_size
                w = w.reshape(w.shape[0], w.shape[1] // g, g)
            lo, hi = w.amin(dim=-1), w.amax(dim=-1)
            if s.weights.strategy == QuantizationStrategy.CHANNEL:
                lo, hi = lo.unsqueeze(-1), hi.unsqueeze(-1)
            scale, zp = calculate_qparams(lo, hi, s.weights)
            module.weight_scale.data.copy_(scale.reshape(module.weight_scale.shape).to(module.weight_scale.dtype))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data.copy_(zp.reshape(module.weight_zero_point.shape).to(module.weight_zero_point.dtype))

    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    for extra in ("generation_config.json",):
        if (src / extra).exists() and not (out / extra).exists():
            (out / extra).write_bytes((src / extra).read_bytes())
    log.info("wrote %s (%s)", out, scheme)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quant_build", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--scheme", choices=("W8A8", "W4A16", "W8A16", "W8A8-keep-down"), default="W8A8")
    ap.add_argument("--group-size", type=int, default=64)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    build(args.src, args.out, args.scheme, args.group_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
