"""The one place where a (task, text) becomes a result, for the batch actor and the Serve
replica alike: render through the chat template, apply the length policy, generate,
parse, classify failures into an `ErrorKind`, count tokens.

    result = await execute(task, text, engine, ctx)
    result.ok -> result.columns   # the task's output columns, as in its Parquet dataset
    else      -> result.error_kind, result.error_message

The engine is anything with `async agenerate(prompt_ids, params) -> Generation`
(`pipeline.engine.engine.Engine`, or a fake in tests). A per-request failure becomes an
error result; an `EngineError` (the engine is dead or not started) is re-raised, because
no other request on that engine can succeed either: the caller replaces the engine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence

from pipeline.engine.outputs import Generation
from pipeline.errors import ErrorKind
from pipeline.tasks.base import Task, TaskOutputError
from pipeline.tasks.prompting import PromptTooLong, render_tokens


class EngineLike(Protocol):
    async def agenerate(self, prompt: Sequence[int], params: Any) -> Generation: ...


@dataclass(frozen=True)
class ExecContext:
    """What executing a task needs besides the engine: the model's tokenizer and limits."""

    tokenizer: Any
    max_model_len: int
    context_policy: str = "truncate"  # 'truncate' | 'reject'


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one (task, text): the task's columns, or an error kind and message."""

    task: str
    columns: Optional[dict[str, Any]] = None
    error_kind: Optional[ErrorKind] = None
    error_message: Optional[str] = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict, compare=False)  # render / generate seconds

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def output_truncated(self) -> bool:
        return bool(self.columns and self.columns.get("output_truncated"))

    @classmethod
    def failure(cls, task: str, kind: ErrorKind | str, message: str, **kw: Any) -> "TaskResult":
        return cls(task=task, error_kind=ErrorKind(kind), error_message=message, **kw)


def finish(task: Task, gen: Generation, input_truncated: bool) -> TaskResult:
    """Parse one finished generation into the task's columns (or an error result)."""
    c = gen.completion
    ptoks, otoks = gen.prompt_tokens, len(c.token_ids)
    try:
        cols = task.parse(c)
    except TaskOutputError as e:
        return TaskResult.failure(task.name, ErrorKind.INVALID_OUTPUT, str(e), prompt_tokens=ptoks, output_tokens=otoks)
    cut = c.finish_reason == "length"
    empty = not (cols.get("output_text") or "").strip()
    if (cut or empty) and task.cfg.on_truncated == "error":
        why = (
            f"the answer was cut at max_tokens ({otoks} tokens); raise sampling.max_tokens"
            if cut
            else "the answer is empty"
        )
        return TaskResult.failure(task.name, ErrorKind.TRUNCATED_OUTPUT, why, prompt_tokens=ptoks, output_tokens=otoks)
    cols.update(
        input_truncated=input_truncated,
        output_truncated=cut or empty,
        prompt_tokens=ptoks,
        output_tokens=otoks,
        finish_reason=c.finish_reason,
    )
    return TaskResult(task=task.name, columns=cols, prompt_tokens=ptoks, output_tokens=otoks)


async def execute(task: Task, text: str, engine: EngineLike, ctx: ExecContext) -> TaskResult:
    """One task on one text, through the engine."""
    from pipeline.engine.engine import EngineError

    t0 = time.perf_counter()
    try:
        ids, truncated = render_tokens(task, text, ctx.tokenizer, ctx.max_model_len, ctx.context_policy)
    except PromptTooLong as e:
        return TaskResult.failure(task.name, ErrorKind.TOO_LONG, str(e))
    t1 = time.perf_counter()
    try:
        gen = await engine.agenerate(ids, task.sampling_params())
    except (EngineError, asyncio.CancelledError):
        raise
    except Exception as e:  # noqa: BLE001 - one request failed; the engine lives on
        return TaskResult.failure(task.name, ErrorKind.GENERATION_ERROR, f"{type(e).__name__}: {e}")
    result = finish(task, gen, truncated)
    result.timings.update(render=t1 - t0, generate=time.perf_counter() - t1)
    return result
