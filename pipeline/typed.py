"""The base of every typed configuration model: unknown fields are errors, values frozen."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config model that names a misspelled field instead of ignoring it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def optional_fields(model: type[BaseModel], only: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """`create_model` field definitions copying `model`'s fields (descriptions and constraints
    kept), each made optional with default None: a partial view of the model, e.g. server-side
    defaults or a request's overrides that are merged first and validated by `model` after."""
    from pydantic.fields import FieldInfo

    names = set(only) if only is not None else None
    out: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        if names is not None and name not in names:
            continue
        info = FieldInfo.merge_field_infos(f, default=None)
        info.default_factory = None
        out[name] = (Optional[f.annotation], info)
    return out
