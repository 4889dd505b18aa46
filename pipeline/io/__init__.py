"""Input side of the pipeline: listing input files (`sources`) and streaming them into commit units (`readers`).

Submodules are imported on first use, so `import pipeline.io` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InputError": "sources",
    "SourceFile": "sources",
    "list_sources": "sources",
    "ROW_SCHEMA": "units",
    "ERROR_KINDS": "readers",
    "CommittedState": "units",
    "unit_id": "units",
    "read_units": "readers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
