"""The shared shape of a task: prompt, sampling parameters, output parsing, output columns.

A task never imports vLLM at module level; `sampling_params()` builds the vLLM object on
demand, so the batch actor and the Serve replica use the very same definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import pyarrow as pa

from pipeline.config import _TaskBase

# Columns every task dataset has, in this order; task-specific columns follow.
COMMON_COLUMNS: list[pa.Field] = [
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("position", pa.int64()),
    pa.field("task", pa.string()),
    pa.field("output_text", pa.string()),
    pa.field("input_truncated", pa.bool_()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("output_tokens", pa.int32()),
    pa.field("finish_reason", pa.string()),
    pa.field("model", pa.string()),
    pa.field("run_id", pa.string()),
]


@dataclass(frozen=True)
class Completion:
    """What a task needs from one engine output (engine-agnostic, easy to build in tests)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Optional[str]
    cumulative_logprob: Optional[float] = None


class TaskOutputError(ValueError):
    """The model's answer could not be parsed into the task's columns (becomes an error record)."""


class Task:
    name: ClassVar[str]
    # Task-specific output columns (after COMMON_COLUMNS).
    extra_columns: ClassVar[list[pa.Field]] = []
    default_system: ClassVar[str]
    default_user: ClassVar[str] = "{text}"
    default_sampling: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: _TaskBase):
        self.cfg = cfg

    # -- prompt ---------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Task parameters usable in prompt templates and written as output columns."""
        return {}

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat messages for one document. The system part is identical for every row,
        so it is a shared prefix that vLLM's prefix cache serves once."""
        fields = {**self.params(), "text": text}
        system = (self.cfg.prompt.system or self.default_system).format_map(_Missing(fields))
        user = (self.cfg.prompt.user or self.default_user).format_map(_Missing(fields))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    # -- sampling -------------------------------------------------------------------
    def sampling_kwargs(self) -> dict[str, Any]:
        kw = {"temperature": 0.0, "max_tokens": 128, **self.default_sampling}
        kw.update(self.cfg.sampling.as_kwargs())
        return kw

    def max_output_tokens(self) -> int:
        return int(self.sampling_kwargs()["max_tokens"])

    def sampling_params(self):
        from vllm import SamplingParams

        return SamplingParams(**self.sampling_kwargs())

    # -- output ---------------------------------------------------------------------
    def parse(self, completion: Completion) -> dict[str, Any]:
        """Task-specific columns from one completion; `output_text` included."""
        return {"output_text": completion.text.strip()}

    @classmethod
    def schema(cls) -> pa.Schema:
        return pa.schema(COMMON_COLUMNS + list(cls.extra_columns))


class _Missing(dict):
    """str.format_map that leaves unknown {fields} as written (user text may hold braces)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
