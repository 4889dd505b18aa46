"""The one place where a (task, text) becomes a result, for the batch actor and the Serve
replica alike: render through the chat template, apply the length policy, generate,
parse, classify failures into an `ErrorKind`, count tokens.

    result = await execute(task, text, engine, ctx)
    result.ok -> result.columns   # the task's output columns, as in its Parquet dataset
    else      -> result.error_kind, result.error_message

The engine is anything with `async agenerate(prompt_ids, params) -> Generation`
(`pipeline.engine.engine.Engine`, or a fake in tests). A per-request failure is retried
(`ExecContext.retries` times) and then becomes an error result; an `EngineError` (the
engine is dead or not started) is re-raised, because no other request on that engine can
succeed either: the caller replaces the engine.

Long texts (context policy 'split', pipeline/tasks/split.py): a text that does not fit one
request is cut into parts at paragraph and sentence ends, sized with the model's tokenizer,
chat template, context length and the task's answer budget. The parts go to the engine as
separate requests, all at once, at a lower priority than whole texts (the engine's request
limit paces them, alongside every other row's requests), and their answers become one
result, by the task's `split_mode`:

- 'join' (translation): the parts' answers in order, with the text's paragraph breaks;
  every source paragraph gives exactly one output paragraph. Whole paragraphs are packed
  together when they fit; an answer that does not come back with as many paragraphs as it
  was sent is redone one paragraph per request, so the structure never depends on the model.
- 'reduce' (summarization): summarize the parts, then the summaries, packing as many as fit
  per request, recursively until one answer is left (`depth` levels).
- 'aggregate' (sentiment): `Task.aggregate` over the parts' answers, weighted by tokens.

Tasks whose text is a whole request (chat: an OpenAI chat-completion body) are bound to it
first (`Task.for_text`): the same steps then take the request's own messages and sampling.

Still one TaskResult per (task, text): the row is whole or an error, never half done.
Token counts sum over every request made for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Protocol, Sequence

from pipeline.engine.outputs import Generation
from pipeline.errors import ErrorKind
from pipeline.tasks.base import Task, TaskInputError, TaskOutputError
from pipeline.tasks.prompting import PromptTooLong, prompt_budget, render_text, render_tokens, template_tokens
from pipeline.tasks.split import Document, Part, split

logger = logging.getLogger(__name__)


class EngineLike(Protocol):
    # `priority` (lower first) is passed for the parts of split texts only.
    async def agenerate(self, prompt: Sequence[int], params: Any, priority: int = 0) -> Generation: ...


# The parts of a split text queue behind whole texts (in the engine's request limit and in
# vLLM's scheduler): a long document fills the engine's spare room and never holds up the
# short rows around it; with nothing else to do, it has the whole engine.
PART_PRIORITY = 1


@dataclass(frozen=True)
class ExecContext:
    """What executing a task needs besides the engine: the model's tokenizer and limits."""

    tokenizer: Any
    max_model_len: int
    # The engine-wide length policy ('split' | 'truncate' | 'reject'); None: each task's own
    # (TaskConfig.context_policy, else the task's default).
    context_policy: Optional[str] = None
    retries: int = 1  # a failed request is sent again this many times

    @classmethod
    def for_engine(cls, tokenizer: Any, cfg: Any, max_model_len: Optional[int] = None) -> "ExecContext":
        """From an `EngineConfig` (batch actor and Serve replica alike); `max_model_len` is the
        started engine's own (`Engine.max_model_len`), needed when the config leaves it unset."""
        return cls(tokenizer, max_model_len or cfg.max_model_len, cfg.context_policy, cfg.request_retries)


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
        parts=1,
    )
    return TaskResult(task=task.name, columns=cols, prompt_tokens=ptoks, output_tokens=otoks)


async def execute(
    task: Task, text: str, engine: EngineLike, ctx: ExecContext, on_split: Optional[Callable[[], None]] = None
) -> TaskResult:
    """One task on one text, through the engine. `on_split` is called once the text is known
    not to fit one request (its parts then run at the lower PART_PRIORITY): the batch actor
    commits the other rows without waiting for it."""
    t0 = time.perf_counter()
    try:
        task = task.for_text(text)  # chat: the request's own messages and sampling
    except TaskInputError as e:
        return TaskResult.failure(task.name, e.kind, str(e))
    policy = task.context_policy(ctx.context_policy)
    try:
        task = await task.bind(engine, ctx)  # e.g. sentiment's calibration, measured once per model
    except _RequestFailed as e:
        return TaskResult.failure(task.name, ErrorKind.GENERATION_ERROR, f"calibrating {task.name}: {e}")
    try:
        if policy == "split":
            plan = plan_parts(task, text, ctx)
            if isinstance(plan, SplitPlan):
                if on_split is not None:
                    on_split()
                return await _execute_split(task, plan, engine, ctx, t0)
            ids, truncated = plan, False
        else:
            ids, truncated = render_tokens(task, text, ctx.tokenizer, ctx.max_model_len, policy)
    except PromptTooLong as e:
        return TaskResult.failure(task.name, ErrorKind.TOO_LONG, str(e))
    except TaskInputError as e:  # a completion request's own prompt ids, checked against the vocabulary
        return TaskResult.failure(task.name, e.kind, str(e))
    t1 = time.perf_counter()
    try:
        gen = await _generate(engine, ids, task.sampling_params_for(text), ctx.retries)
    except _RequestFailed as e:
        return TaskResult.failure(task.name, ErrorKind.GENERATION_ERROR, str(e))
    result = finish(task, gen, truncated)
    result.timings.update(render=t1 - t0, generate=time.perf_counter() - t1)
    return result


# -- requests ---------------------------------------------------------------------------
class _RequestFailed(Exception):
    """A request failed every attempt (the engine itself lives on)."""


async def _generate(engine: EngineLike, ids: Sequence[int], params: Any, retries: int, **kw: Any) -> Generation:
    from pipeline.engine.engine import EngineError

    for attempt in range(retries + 1):
        try:
            return await engine.agenerate(ids, params, **kw)
        except (EngineError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - one request failed; the engine lives on
            last = e
            logger.debug("request failed (attempt %d of %d): %s", attempt + 1, retries + 1, e)
    raise _RequestFailed(f"{type(last).__name__}: {last}" + (f" (after {retries + 1} attempts)" if retries else ""))


async def _all(coros: Sequence[Awaitable[Any]]) -> list[Any]:
    """Await all, in order. The first exception cancels the others and is raised (a dead
    engine before any other), so a failed part stops its row's remaining requests."""
    from pipeline.engine.engine import EngineError

    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:  # also when the caller is cancelled: no orphaned requests
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    errors = [t.exception() for t in tasks if not t.cancelled() and t.exception() is not None]
    if errors:
        raise next((e for e in errors if isinstance(e, EngineError)), errors[0])
    return [t.result() for t in tasks]


# -- long texts -------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedPart:
    part: Part
    ids: list[int]  # the rendered prompt, checked against the budget


@dataclass(frozen=True)
class SplitPlan:
    """A text too long for one request: its paragraphs, and the parts to send."""

    doc: Document
    parts: list[PlannedPart]


def _room(task: Task, ctx: ExecContext) -> int:
    return prompt_budget(task, ctx.max_model_len) - template_tokens(task, ctx.tokenizer)


def plan_parts(task: Task, text: str, ctx: ExecContext) -> list[int] | SplitPlan:
    """The prompt's token ids when the text fits one request; else its parts, each prompt
    rendered and within the budget. Raises PromptTooLong when not even the template leaves
    room for text."""
    tok, budget = ctx.tokenizer, prompt_budget(task, ctx.max_model_len)
    room = _room(task, ctx)
    limit = task.part_tokens(room)
    if limit < 1:
        raise PromptTooLong(
            f"max_model_len {ctx.max_model_len} leaves no room for text after the prompt template "
            f"({template_tokens(task, tok)} tokens) and {task.max_output_tokens()} answer tokens; raise engine.max_model_len"
        )
    ids = _prompt_ids(task, text, tok)  # one tokenization for the common case, a text that fits
    if len(ids) <= budget and len(ids) - template_tokens(task, tok) <= limit:
        return ids
    doc = Document.parse(text)
    return SplitPlan(doc, _split_to_fit(task, doc, limit, ctx))


def _prompt_ids(task: Task, text: str, tokenizer: Any) -> list[int]:
    return tokenizer.encode(render_text(task, text, tokenizer), add_special_tokens=False)


def _split_to_fit(
    task: Task, doc: Document, limit: int, ctx: ExecContext, mix: Optional[bool] = None
) -> list[PlannedPart]:
    """Split, render every part, and split again with a smaller limit if a rendered part
    came out over the budget (token counts of pieces and of their concatenation can differ)."""
    budget = prompt_budget(task, ctx.max_model_len)
    mix = task.split_mode != "join" if mix is None else mix
    for attempt in range(8):
        parts = split(doc, ctx.tokenizer, limit, task.language(), mix_paragraphs=mix)
        planned = [PlannedPart(p, _prompt_ids(task, p.text, ctx.tokenizer)) for p in parts]
        over = max(len(p.ids) - budget for p in planned)
        if over <= 0:
            return planned
        # Packing moves with the limit, so the next try can be over elsewhere: shrink by the
        # overshoot, and by a growing share of the limit when that was not enough.
        limit -= max(over + 1, limit * attempt // 10)
        if limit < 1:
            break
    raise PromptTooLong(f"could not split the text into parts of at most {budget} prompt tokens")


@dataclass
class _Tally:
    """What one row's requests add up to."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    cut: bool = False  # some answer was cut at max_tokens or empty
    generate_seconds: float = 0.0


class _RowFailed(Exception):
    def __init__(self, result: TaskResult):
        super().__init__(result.error_message)
        self.result = result


async def _ask(
    task: Task, ids: list[int], ctx: ExecContext, engine: EngineLike, tally: _Tally, what: str, text: Optional[str] = None
) -> dict[str, Any]:
    """One part's request (`text`: the part's text, when the task's sampling depends on it):
    its parsed columns, or _RowFailed with the part named."""
    params = task.sampling_params() if text is None else task.sampling_params_for(text)
    try:
        gen = await _generate(engine, ids, params, ctx.retries, priority=PART_PRIORITY)
    except _RequestFailed as e:
        raise _RowFailed(TaskResult.failure(task.name, ErrorKind.GENERATION_ERROR, f"{what}: {e}")) from None
    r = finish(task, gen, False)
    tally.prompt_tokens += r.prompt_tokens
    tally.output_tokens += r.output_tokens
    if not r.ok:
        raise _RowFailed(TaskResult.failure(task.name, r.error_kind, f"{what}: {r.error_message}"))
    tally.cut = tally.cut or r.output_truncated
    return r.columns


async def _execute_split(task: Task, plan: SplitPlan, engine: EngineLike, ctx: ExecContext, t0: float) -> TaskResult:
    tally = _Tally()
    t1 = time.perf_counter()
    run = {"join": _join, "reduce": _reduce, "aggregate": _aggregate}[task.split_mode]
    try:
        cols, extra = await run(task, plan, engine, ctx, tally)
    except _RowFailed as e:
        r = e.result
        return TaskResult.failure(
            task.name, r.error_kind, r.error_message, prompt_tokens=tally.prompt_tokens, output_tokens=tally.output_tokens
        )
    except PromptTooLong as e:
        return TaskResult.failure(task.name, ErrorKind.TOO_LONG, str(e), prompt_tokens=tally.prompt_tokens, output_tokens=tally.output_tokens)
    cols.update(
        input_truncated=False,
        output_truncated=tally.cut if task.split_mode == "join" else cols["output_truncated"],
        prompt_tokens=tally.prompt_tokens,
        output_tokens=tally.output_tokens,
        **extra,
    )
    if task.split_mode == "join":
        cols["finish_reason"] = "length" if tally.cut else "stop"
    result = TaskResult(task=task.name, columns=cols, prompt_tokens=tally.prompt_tokens, output_tokens=tally.output_tokens)
    result.timings.update(render=t1 - t0, generate=time.perf_counter() - t1)
    return result


def _blank_lines_closed(text: str) -> str:
    """An answer that must stay inside one paragraph: its own blank lines become line breaks."""
    return "\n".join(line for line in text.strip().splitlines() if line.strip())


async def _join(task: Task, plan: SplitPlan, engine: EngineLike, ctx: ExecContext, tally: _Tally):
    """Translate every part at once; join in order with the original paragraph breaks."""
    doc, planned = plan.doc, plan.parts
    n = len(planned)
    answers = await _all(
        [_ask(task, p.ids, ctx, engine, tally, f"part {k + 1} of {n}", p.part.text) for k, p in enumerate(planned)]
    )
    pieces: dict[int, list[str]] = {}
    redo: list[int] = []
    used = n
    for p, a in zip(planned, answers):
        part = p.part
        if part.whole and len(part.paragraphs) > 1:
            got = [q.strip() for q in Document.parse(a["output_text"].strip()).paragraphs]
            if len(got) == len(part.paragraphs) and all(got):
                for i, q in zip(part.paragraphs, got):
                    pieces[i] = [q]
            else:  # the model merged or split paragraphs: ask again, one paragraph per request
                redo += part.paragraphs
                used += len(part.paragraphs) - 1
        else:
            pieces.setdefault(part.paragraphs[0], []).append(_blank_lines_closed(a["output_text"]))
    if redo:
        again = [_prompt_ids(task, doc.paragraphs[i], ctx.tokenizer) for i in redo]
        more = await _all(
            [_ask(task, ids, ctx, engine, tally, f"paragraph {i + 1}", doc.paragraphs[i]) for i, ids in zip(redo, again)]
        )
        for i, a in zip(redo, more):
            pieces[i] = [_blank_lines_closed(a["output_text"])]
    # Sentences of one paragraph translated apart are joined with a space (scripts without
    # spaces between words, such as Chinese or Japanese, would want none).
    text = doc.join([" ".join(pieces.get(i, [])) for i in range(len(doc.paragraphs))]).strip()
    cols = {**answers[0], "output_text": text}
    return cols, {"parts": used}


async def _reduce(task: Task, plan: SplitPlan, engine: EngineLike, ctx: ExecContext, tally: _Tally):
    """Summarize the parts, then the summaries, as many per request as fit, until one is left."""
    n_parts, depth = len(plan.parts), 0
    level = [p.ids for p in plan.parts]
    limit = _room(task, ctx)
    while True:
        depth += 1
        k = len(level)
        answers = await _all(
            [_ask(task, ids, ctx, engine, tally, f"level {depth}, request {j + 1} of {k}") for j, ids in enumerate(level)]
        )
        if k == 1:
            cols = answers[0]
            break
        summaries = [a["output_text"].strip() or "(empty)" for a in answers]
        doc = Document(tuple(summaries), ("\n\n",) * (k - 1))
        nxt = _split_to_fit(task, doc, limit, ctx, mix=True)
        if len(nxt) >= k:
            raise PromptTooLong(
                f"summaries of up to {task.max_output_tokens()} tokens do not fit two to a request within "
                f"max_model_len {ctx.max_model_len}: raise engine.max_model_len or lower max_words"
            )
        level = [p.ids for p in nxt]
    return cols, {"parts": n_parts, "depth": depth}


async def _aggregate(task: Task, plan: SplitPlan, engine: EngineLike, ctx: ExecContext, tally: _Tally):
    """Every part answered at once; the task combines the answers, weighted by part tokens."""
    planned = plan.parts
    n = len(planned)
    answers = await _all([_ask(task, p.ids, ctx, engine, tally, f"part {k + 1} of {n}") for k, p in enumerate(planned)])
    cols = task.aggregate(answers, [float(max(p.part.tokens, 1)) for p in planned])
    cut = any(a["output_truncated"] for a in answers)
    cols.update(output_truncated=cut, finish_reason="length" if cut else "stop")
    return cols, {"parts": n}
