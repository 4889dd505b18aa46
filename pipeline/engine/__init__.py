"""Inference engine: model resolution/preparation (models), tiny test model (tiny), vLLM engine.

Importing this package is cheap: vLLM, torch and transformers load only inside functions.
"""

from .models import (
    DEFAULT_MODEL_NAME,
    ModelError,
    cache_dir,
    default_model_path,
    ensure_default_model,
    model_fingerprint,
    resolve_model,
)
from .tiny import build_tiny_model

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelError",
    "build_tiny_model",
    "cache_dir",
    "default_model_path",
    "ensure_default_model",
    "model_fingerprint",
    "resolve_model",
]
