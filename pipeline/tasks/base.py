"""The shared shape of a task: prompt, sampling parameters, output parsing, output columns.

A task never imports vLLM at module level; `sampling_params()` builds the vLLM object on
demand, so the batch actor and the Serve replica use the very same definition.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.engine.outputs import Completion
from pipeline.typed import StrictModel

# Columns every task dataset has, in this order; task-specific columns follow.
COMMON_COLUMNS: list[pa.Field] = [
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("position", pa.int64()),
    pa.field("task", pa.string()),
    pa.field("output_text", pa.string()),
    pa.field("input_truncated", pa.bool_()),
    # The answer was cut at max_tokens (finish_reason 'length') or is empty: kept, but flagged
    # (task setting on_truncated: error makes it an error record instead).
    pa.field("output_truncated", pa.bool_()),
    pa.field("prompt_tokens", pa.int32()),
    pa.field("output_tokens", pa.int32()),
    pa.field("finish_reason", pa.string()),
    # Requests whose answers make up output_text: 1 when the text fit one request, more when
    # context_policy 'split' cut it into parts (prompt_tokens and output_tokens sum over all).
    pa.field("parts", pa.int32()),
    pa.field("model", pa.string()),
    pa.field("run_id", pa.string()),
]


class SamplingOverride(StrictModel):
    """Any subset of vLLM SamplingParams fields; merged over the task's defaults."""

    temperature: Optional[float] = Field(None, ge=0, description="0 is greedy (the default).")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: Optional[int] = Field(None, description="Sample among the k most likely tokens (-1: all).")
    max_tokens: Optional[int] = Field(None, ge=1, description="Most tokens generated per answer.")
    min_tokens: Optional[int] = Field(None, ge=0, description="Fewest tokens generated before a stop may end the answer.")
    repetition_penalty: Optional[float] = Field(None, gt=0, description=">1 discourages repeating tokens.")
    frequency_penalty: Optional[float] = Field(
        None, ge=-2, le=2, description=">0 discourages a token by how often it already occurs in the answer."
    )
    ignore_eos: Optional[bool] = Field(None, description="Keep generating past the end-of-sequence token.")
    seed: Optional[int] = Field(None, description="Per-request seed for sampled (temperature > 0) answers.")
    stop: Optional[list[str]] = Field(
        None,
        description="Strings that end an answer (not included in it); [] for none. Summaries and translations of "
        "one-line texts stop at a line break by default.",
    )

    def as_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class PromptExample(StrictModel):
    """One worked example shown to the model before the text (a user turn, then the answer)."""

    text: str = Field(description="The example's text, put through the user template like any text.")
    answer: str = Field(description="The answer the model should give to it.")


class PromptOverride(StrictModel):
    system: Optional[str] = Field(None, description="System message; replaces the task's default instruction.")
    examples: Optional[list[PromptExample]] = Field(
        None,
        description="Worked examples put between the instruction and the text, as earlier turns of the chat; "
        "replace the task's default examples ([] for none).",
    )
    user: Optional[str] = Field(
        None,
        description="User message template; must contain '{text}'. Other fields: the task's parameters, e.g. {target_lang}.",
    )

    @field_validator("user")
    @classmethod
    def _has_text(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and "{text}" not in v:
            raise ValueError("the user template must contain '{text}'")
        return v


ContextPolicy = Literal["split", "truncate", "reject"]


class TaskConfig(StrictModel):
    """Settings every task has; each task's config model adds its own."""

    context_policy: Optional[ContextPolicy] = Field(
        None,
        description="A text too long for one request: 'split' it into parts at paragraph and sentence ends "
        "(translation: parts translated and joined; summarization: parts summarized, then the summaries; "
        "sentiment: part label probabilities averaged), 'truncate' it (its start kept, input_truncated=true) "
        "or 'reject' it (an error record of kind too_long). Unset: engine.context_policy if set, else the "
        "task's default (split for every task).",
    )

    prompt: PromptOverride = Field(default_factory=PromptOverride, description="Prompt overrides.")
    sampling: SamplingOverride = Field(default_factory=SamplingOverride, description="Sampling overrides.")
    on_truncated: Literal["keep", "error"] = Field(
        "keep",
        description="An answer cut at max_tokens, or empty: 'keep' it with output_truncated=true (counted apart "
        "in the summary), or 'error': an error record of kind truncated_output instead.",
    )


class TaskOutputError(ValueError):
    """The model's answer could not be parsed into the task's columns (becomes an error record)."""


class TaskInputError(ValueError):
    """A text the task cannot take (a chat request it cannot serve): an error record of `kind`."""

    def __init__(self, kind: Any, message: str):
        super().__init__(message)
        self.kind = kind


class Task:
    name: ClassVar[str]
    # The online endpoint's path for this task: POST /v1/<route> (a verb or noun a client reads).
    route: ClassVar[str]
    description: ClassVar[str] = ""
    config_model: ClassVar[type[TaskConfig]] = TaskConfig
    # Bump when `parse` (or anything else that changes results besides the prompt and
    # sampling defaults below) changes: it is part of every run id.
    parser_version: ClassVar[int] = 1
    # Task-specific output columns (after COMMON_COLUMNS).
    extra_columns: ClassVar[list[pa.Field]] = []
    default_system: ClassVar[str]
    default_user: ClassVar[str] = "{text}"
    default_sampling: ClassVar[dict[str, Any]] = {}
    # Worked examples (text, answer) shown before every text: a shared prompt prefix, so
    # vLLM's prefix cache computes them once.
    default_examples: ClassVar[list[tuple[str, str]]] = []
    # What context_policy 'split' does with the parts' answers (pipeline/tasks/execute.py):
    # 'join' them in order, 'reduce' them (answer the joined answers, recursively), or
    # 'aggregate' them (Task.aggregate). None: the task's texts cannot be split.
    split_mode: ClassVar[Optional[Literal["join", "reduce", "aggregate"]]]
    default_context_policy: ClassVar[ContextPolicy] = "split"
    # The policies that make sense for the task's texts; an engine-wide one outside them
    # gives way to the task's default.
    context_policies: ClassVar[tuple[ContextPolicy, ...]] = ("split", "truncate", "reject")
    # The input format the task's texts must come in (chat: 'openai_batch' request bodies);
    # None: any format's text. The job config checks that the two agree.
    input_format: ClassVar[Optional[str]] = None

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg
        self._params: Any = None

    # -- prompt ---------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Task parameters usable in prompt templates and written as output columns."""
        return {}

    def for_text(self, text: str) -> "Task":
        """The task as it applies to one text: itself for tasks whose prompt and sampling are
        the same for every text; a task whose text is a whole request (chat) returns itself
        bound to that request's messages and sampling. Raises TaskInputError for a text the
        task cannot take (an error record, never a crash)."""
        return self

    def messages(self, text: str) -> list[dict[str, str]]:
        """Chat messages for one document. The system part is identical for every row,
        so it is a shared prefix that vLLM's prefix cache serves once."""
        params = self.params()
        system = (self.cfg.prompt.system or self.default_system).format_map(_Missing({**params, "text": text}))
        template = self.cfg.prompt.user or self.default_user

        def user(t: str) -> dict[str, str]:
            return {"role": "user", "content": template.format_map(_Missing({**params, "text": t}))}

        examples = self.default_examples
        if self.cfg.prompt.examples is not None:
            examples = [(e.text, e.answer) for e in self.cfg.prompt.examples]
        shots = [m for t, a in examples for m in (user(t), {"role": "assistant", "content": a})]
        return [{"role": "system", "content": system}, *shots, user(text)]

    # -- binding to a model ---------------------------------------------------------------
    async def bind(self, engine: Any, ctx: Any) -> "Task":
        """The task as it runs on this engine (model and tokenizer): itself, unless it needs
        something measured on the model first (sentiment's calibration). Called by
        `pipeline.tasks.execute.execute` before every row; cached by the task."""
        return self

    def prompt_ids(self, tokenizer: Any) -> Optional[list[int]]:
        """Prompt token ids the task gives itself, bypassing the chat template (a completion
        request's raw prompt); None: the prompt is `messages` through the template."""
        return None

    # -- long texts -------------------------------------------------------------------
    def context_policy(self, engine_default: Optional[str] = None) -> str:
        """The task's own setting, else the engine-wide one, else the task's default."""
        policy = self.cfg.context_policy or engine_default or self.default_context_policy
        return policy if policy in self.context_policies else self.default_context_policy

    def part_tokens(self, room: int) -> int:
        """Most text tokens per part, given `room` left in the context by the prompt and the
        answer: all of it unless the answer grows with the input (translation)."""
        return room

    def language(self) -> str:
        """Language of the input text (for sentence splitting); English unless the task says."""
        return "en"

    def aggregate(self, answers: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
        """One answer from the parts' answers (split_mode 'aggregate' only)."""
        raise NotImplementedError(f"task {self.name} does not aggregate parts")

    # -- sampling -------------------------------------------------------------------
    def sampling_kwargs(self) -> dict[str, Any]:
        kw = {"temperature": 0.0, "max_tokens": 128, **self.default_sampling}
        kw.update(self.cfg.sampling.as_kwargs())
        return kw

    def max_output_tokens(self) -> int:
        return int(self.sampling_kwargs()["max_tokens"])

    def sampling_params(self):
        """vLLM SamplingParams, built once per task object (the engine keys caches on it)."""
        if self._params is None:
            self._params = self._build_sampling_params()
        return self._params

    def sampling_params_for(self, text: str):
        """SamplingParams for one text (a whole text or one part of a split one): the task's
        one object unless the task varies them by text (translation of a one-line text)."""
        return self.sampling_params()

    def _build_sampling_params(self):
        from vllm import SamplingParams

        return SamplingParams(**self.sampling_kwargs())

    # -- output ---------------------------------------------------------------------
    def parse(self, completion: Completion) -> dict[str, Any]:
        """Task-specific columns from one completion; `output_text` included."""
        return {"output_text": completion.text.strip()}

    @classmethod
    def definition(cls) -> dict[str, Any]:
        """What of the task's code changes results: its defaults and parser version."""
        return {
            "system": cls.default_system,
            "user": cls.default_user,
            "sampling": cls.default_sampling,
            "examples": cls.default_examples,
            "parser_version": cls.parser_version,
            "context_policy": cls.default_context_policy,
            "split_mode": cls.split_mode,
        }

    @classmethod
    def schema(cls) -> pa.Schema:
        return pa.schema(COMMON_COLUMNS + list(cls.extra_columns))


class _Missing(dict):
    """str.format_map that leaves unknown {fields} as written (user text may hold braces)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
