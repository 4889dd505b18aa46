"""Request and response models of the endpoint; FastAPI builds the OpenAPI document from them.

The task routes' models are derived from the task registry: a task's request takes its
own config fields (`labels`, `max_words`, `target_lang`, ...) and its result has the
columns of its batch dataset (`Task.schema()`), so the online answer and the batch row
cannot drift apart. Limits from the serve config (texts per request, characters per
text) are part of the schema, so the document states them and validation enforces them.
"""

from __future__ import annotations

import functools
from typing import Any, Generic, Literal, Optional, TypeVar, Union

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from typing_extensions import Annotated

from pipeline.errors import ErrorKind
from pipeline.tasks.base import SamplingOverride, Task, TaskConfig
from pipeline.typed import optional_fields

# Batch-only columns: where a row came from and which run wrote it.
BATCH_ONLY_COLUMNS = ("row_id", "source", "position", "run_id", "task")


class _Body(BaseModel):
    """A request body: unknown fields are a 422 naming them, not silently ignored; so are
    strings that are not valid Unicode (JSON's "\\ud800" escapes): no tokenizer or
    response encoder downstream can take them."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self):
        for name, value in self:
            _check_unicode(value, name)
        return self


def _check_unicode(value: Any, where: str) -> None:
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"{where} contains a lone surrogate at offset {e.start} (not valid Unicode)") from None
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_unicode(v, f"{where}.{i}")
    elif isinstance(value, BaseModel) and not isinstance(value, _Body):  # a _Body checks itself
        for name, v in value:
            _check_unicode(v, f"{where}.{name}")


# -- errors -----------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    kind: ErrorKind = Field(description="Why: one of the pipeline's error kinds (the same names as the batch errors dataset).")
    message: str = Field(description="What went wrong and what to do about it.")
    param: Optional[str] = Field(None, description="The request field at fault, where there is one.")


class ErrorResponse(BaseModel):
    """Every non-200 answer (OpenAI clients read `error.message`)."""

    error: ErrorDetail


class TextErrorDetail(BaseModel):
    kind: ErrorKind = Field(description="The error kind, as in the batch errors dataset's error_kind column.")
    message: str


class TextError(BaseModel):
    """One text of a task request that has no result (the others still have theirs)."""

    error: TextErrorDetail


# -- task routes ------------------------------------------------------------------------
def task_param_names(task_cls: type[Task]) -> list[str]:
    """The task's own parameters (not the settings every task has: prompt, sampling, ...)."""
    return [n for n in task_cls.config_model.model_fields if n not in TaskConfig.model_fields]


class _TaskBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"oneOf": [{"required": ["text"]}, {"required": ["texts"]}]})


@functools.lru_cache(maxsize=None)
def request_sampling_model(max_tokens: int) -> type[BaseModel]:
    """The task's sampling overrides as a request may give them: max_tokens within the cap."""
    return create_model(
        "RequestSampling",
        __base__=SamplingOverride,
        __doc__=SamplingOverride.__doc__,
        max_tokens=(Optional[int], Field(None, ge=1, le=max_tokens, description=f"Most tokens generated per answer (at most {max_tokens}).")),
        min_tokens=(Optional[int], Field(None, ge=0, le=max_tokens, description="Fewest tokens generated before a stop may end the answer.")),
    )


@functools.lru_cache(maxsize=None)
def task_request_model(
    task_cls: type[Task], max_texts: int, max_chars: int, max_tokens: int, server_defaults: frozenset[str] = frozenset()
) -> type[BaseModel]:
    """A task route's body. The task's parameters are optional where the server has a default
    for them (`server_defaults`) or the task does; a parameter the task requires and the
    server does not default (translation's target_lang, say) is required here too."""
    text_type = Annotated[str, Field(max_length=max_chars)]

    def one_of(self):
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (one string) or 'texts' (a list of strings)")
        return self

    params = optional_fields(task_cls.config_model, only=task_param_names(task_cls))
    for name, f in task_cls.config_model.model_fields.items():
        if name in params and f.is_required() and name not in server_defaults:
            params[name] = (f.annotation, f)
    # 'text' and 'texts' may be left out, not null: the document says so (one of them required).
    return create_model(
        f"{task_cls.__name__}Request",
        __base__=_TaskBody,
        __doc__=f"{task_cls.description} Parameters left out take the server's defaults, then the task's.",
        __validators__={"one_of": model_validator(mode="after")(one_of)},
        text=(text_type, Field(None, description=f"One text (at most {max_chars} characters).")),
        texts=(
            list[text_type],
            Field(None, min_length=1, max_length=max_texts, description=f"Several texts (at most {max_texts}), answered in order."),
        ),
        sampling=(
            Optional[request_sampling_model(max_tokens)],
            Field(None, description=f"Sampling overrides (greedy by default); max_tokens at most {max_tokens}."),
        ),
        **params,
    )

_ARROW_TYPES = {pa.string(): str, pa.bool_(): bool, pa.int32(): int, pa.int64(): int, pa.float64(): float,
                pa.map_(pa.string(), pa.float64()): dict[str, float]}


@functools.lru_cache(maxsize=None)
def task_result_model(task_cls: type[Task]) -> type[BaseModel]:
    """One text's result: the columns of the task's batch dataset, minus where-from columns."""
    fields: dict[str, Any] = {}
    for f in task_cls.schema():
        if f.name in BATCH_ONLY_COLUMNS:
            continue
        py = _ARROW_TYPES[f.type]
        fields[f.name] = (Optional[py] if f.nullable else py, ...)
    fields["model"] = (str, Field(description="The model's folder name (the batch 'model' column)."))
    return create_model(f"{task_cls.__name__}Result", __doc__=f"One {task_cls.name} result (as a batch row).", **fields)


@functools.lru_cache(maxsize=None)
def task_response_model(task_cls: type[Task]) -> type[BaseModel]:
    return create_model(
        f"{task_cls.__name__}Response",
        results=(
            list[Union[task_result_model(task_cls), TextError]],
            Field(description="One entry per text, in request order: its result, or its error."),
        ),
    )


# -- models and health ------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pipeline"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class EngineState(BaseModel):
    in_flight: int = Field(description="Requests in this replica's engine now.")
    admitted: int = Field(description="Texts and prompts admitted into this replica now (admission.max_texts_in_flight bounds it).")
    running: Optional[float] = Field(None, description="vLLM: requests running.")
    waiting: Optional[float] = Field(None, description="vLLM: requests waiting for a slot.")
    finished: int = Field(description="Engine requests finished since the replica started.")
    aborted: int = Field(description="Requests whose generation was aborted (deadline, dead engine, client gone) since the replica started.")


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    engine: EngineState


# -- OpenAI-compatible routes ---------------------------------------------------------------
class _OpenAIBody(_Body):
    model: str = Field(description="The served model's id (GET /v1/models).")
    max_tokens: Optional[int] = Field(None, ge=1, description="Most tokens to generate (capped by the server).")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="Default 1.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: Literal[1] = Field(1, description="Choices per prompt: only 1 is served.")
    stop: Optional[Union[Annotated[str, Field(min_length=1)], Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    user: Optional[str] = None
    # vLLM's extensions, accepted so that clients written for `vllm serve` work unchanged.
    ignore_eos: Optional[bool] = Field(None, description="vLLM extension: keep generating past the end-of-sequence token.")
    min_tokens: Optional[int] = Field(None, ge=0, description="vLLM extension: fewest tokens before a stop may end the answer.")


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="Send a last chunk with the token usage.")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None


class ChatCompletionRequest(_OpenAIBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="Same as max_tokens (newer name).")


class CompletionRequest(_OpenAIBody):
    prompt: Union[str, list[str]] = Field(description="A prompt, or several (one choice each).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Optional[str]
    logprobs: None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Optional[str]
    logprobs: None = None


_C = TypeVar("_C", bound=BaseModel)


class _Answer(BaseModel, Generic[_C]):
    """What both OpenAI routes answer; each names its own `object` and choices."""

    id: str
    object: str
    created: int
    model: str
    choices: list[_C]
    usage: Usage


class ChatCompletion(_Answer[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"


class Completion(_Answer[CompletionChoice]):
    object: Literal["text_completion"] = "text_completion"


_OpenAIBody.model_rebuild()
ChatCompletionRequest.model_rebuild()
CompletionRequest.model_rebuild()


@functools.lru_cache(maxsize=None)
def openai_request_models(max_tokens: int, max_chars: int, max_texts: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The chat and completion bodies with this server's limits in them, so that the OpenAPI
    document states them and validation enforces them."""
    tokens = dict(
        max_tokens=(Optional[int], Field(None, ge=1, le=max_tokens, description=f"Most tokens to generate (at most {max_tokens}).")),
        min_tokens=(Optional[int], Field(None, ge=0, le=max_tokens, description="vLLM extension: fewest tokens before a stop may end the answer.")),
    )
    content = Annotated[str, Field(max_length=max_chars)]
    message = create_model(
        "ChatMessage", __base__=ChatMessage, content=(Union[content, list[TextPart]], Field(description=f"At most {max_chars} characters in all messages."))
    )
    chat = create_model(
        "ChatCompletionRequest",
        __base__=ChatCompletionRequest,
        messages=(list[message], Field(min_length=1)),
        max_completion_tokens=(Optional[int], Field(None, ge=1, le=max_tokens, description="Same as max_tokens (newer name).")),
        **tokens,
    )
    prompt = Annotated[str, Field(min_length=1, max_length=max_chars)]
    completion = create_model(
        "CompletionRequest",
        __base__=CompletionRequest,
        prompt=(Union[prompt, Annotated[list[prompt], Field(min_length=1, max_length=max_texts)]], Field(description=f"A prompt, or up to {max_texts} (one choice each).")),
        **tokens,
    )
    return chat, completion
