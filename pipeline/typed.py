"""The base of every typed configuration model: unknown fields are errors, values frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config model that names a misspelled field instead of ignoring it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
