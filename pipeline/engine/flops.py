"""Model FLOP utilization: the FLOPs a run's tokens cost, over the machine's matrix peak.

FLOPs (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", table 1):

    forward FLOPs per token = 2·N + 2·n_layer·n_ctx·d_attn

with N the weights of the transformer's matrix products, counted from the checkpoint's
tensor shapes (attention and MLP projections; embeddings out: a lookup is no matrix
product), n_layer and d_attn (= heads x head size) from config.json, and n_ctx the
positions a token attends to. vLLM computes the output layer (2·d_model·n_vocab) only
where it samples a token, so it is counted once per generated token, not per prompt
token; prompt tokens served from vLLM's prefix cache are not computed, so not counted. n_ctx is the mean over tokens: a prompt token at position p attends to p
positions, so prompt tokens average half the mean prompt length and generated tokens the
mean prompt length plus half the mean output length.

(The training-time shorthand 6·N_total, or 2·N_total for a forward pass, counts the input
embedding and the output layer for every token: for SmolLM2-135M that is 0.27 GFLOP per
token against 0.21 + 0.06 per generated token here.)

The peak is measured, not taken from a data sheet: the best GFLOP/s of a square matrix
product in torch, with the dtype and the number of threads the engine uses, pinned to as
many cores. `measure_peak` runs it in a fresh process and caches the figure in the
pipeline cache folder (`peaks.json`), keyed by CPU model, torch version, dtype and
threads; the benchmark measures it before its runs (`python -m bench --peak` alone), and a
run summary measures it after the run when it is not cached yet (`ensure_peak`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger(__name__)

PEAKS_FILE = "peaks.json"
# Square matrix side for the peak: large enough that the product is compute-bound on a
# CPU (2·n³ = 17 GFLOP), small enough to repeat many times in a few seconds.
PEAK_N = 2048
_EMBEDDING_NAMES = ("embed_tokens", "wte", "wpe", "word_embeddings", "position_embeddings", "lm_head", "embed_out")


@dataclass(frozen=True)
class ModelFlops:
    """What the FLOP count of a model needs, read from its folder."""

    matmul_params: int  # N: weights of the transformer's matrix products (no embeddings)
    head_params: int  # d_model x n_vocab: the output layer
    n_layer: int
    d_attn: int  # attention heads x head size

    @classmethod
    def from_model(cls, model_dir: str | os.PathLike) -> "ModelFlops":
        d = Path(model_dir)
        cfg = json.loads((d / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)  # multimodal configs nest the language model's
        hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg["d_model"])
        layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg["num_layers"])
        heads = int(cfg.get("num_attention_heads") or cfg.get("n_head"))
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        vocab = int(cfg["vocab_size"])
        n = _matmul_params_from_weights(d)
        if n is None:
            n = _matmul_params_from_config(cfg, hidden, layers, heads, head_dim)
        return cls(matmul_params=n, head_params=hidden * vocab, n_layer=layers, d_attn=heads * head_dim)

    def run_flops(self, prompt_tokens: int, output_tokens: int, requests: int, cached_prompt_tokens: float = 0.0) -> float:
        """Forward FLOPs of `requests` requests totalling these prompt and output tokens, of
        which `cached_prompt_tokens` were served from vLLM's prefix cache (not computed)."""
        if requests <= 0:
            return 0.0
        p, o = prompt_tokens / requests, output_tokens / requests
        ctx_prompt, ctx_output = p / 2, p + o / 2
        computed = max(0.0, prompt_tokens - cached_prompt_tokens)
        body = 2.0 * self.matmul_params * (computed + output_tokens)
        attn = 2.0 * self.n_layer * self.d_attn * (computed * ctx_prompt + output_tokens * ctx_output)
        head = 2.0 * self.head_params * output_tokens
        return body + attn + head

    def basis(self) -> str:
        return (f"2·N + 2·n_layer·n_ctx·d_attn per token (Kaplan et al. 2020), N = {self.matmul_params / 1e6:.1f}M matrix "
                f"weights (no embeddings), n_layer = {self.n_layer}, d_attn = {self.d_attn}; output layer "
                f"({self.head_params / 1e6:.1f}M) per generated token")


def _matmul_params_from_weights(d: Path) -> Optional[int]:
    """Sum of the 2-D+ tensors in the safetensors headers, embeddings and output layer out
    (norms and biases are 1-D: no matrix product)."""
    files = sorted(d.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with open(f, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
            for name, t in header.items():
                if name == "__metadata__" or len(t.get("shape", ())) < 2:
                    continue
                if any(e in name for e in _EMBEDDING_NAMES):
                    continue
                k = 1
                for s in t["shape"]:
                    k *= int(s)
                total += k
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total or None


def _matmul_params_from_config(cfg: dict[str, Any], hidden: int, layers: int, heads: int, head_dim: int) -> int:
    """Llama-style estimate when there are no safetensors files: q, k, v, o and a gated MLP."""
    kv = int(cfg.get("num_key_value_heads") or heads)
    ff = int(cfg.get("intermediate_size") or 4 * hidden)
    gated = cfg.get("hidden_act", "silu") in ("silu", "swiglu", "gelu_pytorch_tanh") and "intermediate_size" in cfg
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = (3 if gated else 2) * hidden * ff
    return layers * (attn + mlp)


# -- the measured peak ----------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def peak_key(dtype: str, threads: int) -> str:
    import importlib.metadata

    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    return f"{cpu_model()} | torch {torch_version} | {dtype} | {threads} threads"


def _peaks_path() -> Path:
    from pipeline.engine.models import cache_dir

    return cache_dir() / PEAKS_FILE


def known_peak(dtype: str, threads: int) -> Optional[float]:
    """The cached peak GFLOP/s for this machine, dtype and thread count, if measured."""
    try:
        data = json.loads(_peaks_path().read_text())
    except (OSError, ValueError):
        return None
    entry = data.get(peak_key(dtype, threads))
    return float(entry["gflops"]) if entry else None


def measure_peak(dtype: str, cpus: Sequence[int], seconds: float = 3.0, save: bool = True) -> float:
    """Best GFLOP/s of a PEAK_N² matrix product in torch, `len(cpus)` threads pinned to
    `cpus`, in a fresh process (torch's thread pool is sized once per process). With `save`,
    the best of this and the cached figure is kept and returned."""
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cpus)), "OMP_PROC_BIND": "true",
           "OMP_PLACES": "{" + "},{".join(str(c) for c in cpus) + "}"}
    code = (
        "import os, sys, time, torch\n"
        f"os.sched_setaffinity(0, {list(cpus)!r}); torch.set_num_threads({len(cpus)})\n"
        f"dt = getattr(torch, {dtype!r}); n = {PEAK_N}\n"
        "a = torch.randn(n, n).to(dt); b = torch.randn(n, n).to(dt)\n"
        "for _ in range(3): a @ b\n"
        f"best, end = 0.0, time.time() + {seconds}\n"
        "while time.time() < end:\n"
        "    t0 = time.perf_counter(); a @ b; best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)\n"
        "print(best)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    gflops = float(out.stdout.strip().splitlines()[-1])
    if save:
        path = _peaks_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        key = peak_key(dtype, len(cpus))
        # A peak is a maximum: another process on these cores only ever lowers a measurement
        # (2026-11-23: a bf16 product on 2 threads read 421 GFLOP/s while a neighbour ran,
        # 884 alone), so the best figure for the same machine, torch, dtype and threads stands.
        known = (data.get(key) or {}).get("gflops")
        if known is not None and known > gflops:
            return float(known)
        data[key] = {"gflops": round(gflops, 1), "cpus": list(cpus),
                     "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    return gflops


def ensure_peak(dtype: str, threads: int, seconds: float = 2.0) -> float:
    """The cached peak, measured now (one core per thread, a few seconds, once per machine,
    dtype and thread count) when there is none yet."""
    known = known_peak(dtype, threads)
    if known is not None:
        return known
    from pipeline.engine.cpus import CpuTopology

    one_per_core = [c for cpus in CpuTopology.detect().nodes().values() for c in cpus]
    return measure_peak(dtype, one_per_core[: max(1, threads)], seconds=seconds)


@dataclass(frozen=True)
class Utilization:
    flops: float  # model FLOPs of the run
    gflops_per_second: float  # achieved, over the given seconds
    peak_gflops: Optional[float]  # sum of the engines' measured peaks; None when unknown
    mfu: Optional[float]
    basis: str
    note: Optional[str] = None


def utilization(model: ModelFlops, prompt_tokens: int, output_tokens: int, requests: int, seconds: float,
                engines: Sequence[tuple[str, int]], prefix_cache_hit_rate: Optional[float] = None) -> Utilization:
    """MFU over `seconds` for engines given as (dtype, compute threads); the peak is the sum
    of each engine's cached peak (engines on separate cores don't share matrix units).
    Prompt tokens the prefix cache served are not counted: nothing computed them."""
    flops = model.run_flops(prompt_tokens, output_tokens, requests, prompt_tokens * (prefix_cache_hit_rate or 0.0))
    achieved = flops / seconds / 1e9 if seconds > 0 else 0.0
    peaks = [known_peak(dtype, threads) for dtype, threads in engines]
    if engines and all(p is not None for p in peaks):
        peak = float(sum(peaks))  # type: ignore[arg-type]
        return Utilization(flops, achieved, peak, achieved / peak if peak else None, model.basis())
    missing = sorted({f"{d}, {t} threads" for (d, t), p in zip(engines, peaks) if p is None})
    return Utilization(flops, achieved, None, None, model.basis(),
                       note=f"no measured matrix peak for {'; '.join(missing) or 'these engines'} on this machine: "
                            "run `python -m bench --peak` once")
