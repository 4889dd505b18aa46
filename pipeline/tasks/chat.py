"""Chat: OpenAI chat-completion requests, one per row (`input.format: openai_batch`).

A row's text is the body of a `/v1/chat/completions` request (pipeline/io/formats/
openai_batch.py). `for_text` checks it with vLLM's own request model
(`ChatCompletionRequest`, what `vllm serve` and `vllm run-batch` take) and binds the task
to it, so that `execute()` runs it like any task's text:

- the prompt is the request's messages, rendered through the model's chat template as
  every task's prompt is (pipeline/tasks/prompting.py); text content parts are joined with
  a line break, as vLLM joins them;
- the sampling parameters come from the body through vLLM's own `to_sampling_params`, so a
  field means what it means to vLLM's server: OpenAI's defaults (temperature 1, top_p 1),
  max_completion_tokens before max_tokens, stop, seed, penalties, logit_bias,
  response_format (JSON schemas through structured outputs), ... What a body leaves unset
  comes from `tasks.chat.sampling` first;
- max_tokens unset: the answer may fill the room the prompt leaves in the context; set past
  that room: the answer stops at the context's end (finish_reason 'length'), both as vLLM's
  server does. A prompt that leaves no room for one token is a too_long error record
  (a conversation is never truncated or split).

Not served, an unsupported_request error record naming the field: n > 1, streaming, tools
and tool calls, logprobs, content other than text (images, audio, files), and vLLM's options
that change the prompt or the answer's form (echo, chat_template, ...). OpenAI's
bookkeeping fields (metadata, store, user, ...) are accepted and change nothing; so is
`model`: this job's model answers every line (vLLM's server refuses another name).
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Any, Literal, Optional

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.errors import ErrorKind
from pipeline.tasks.base import Completion, PromptOverride, SamplingOverride, Task, TaskConfig, TaskInputError

# Body fields served as vLLM serves them.
SERVED = frozenset(
    {
        "messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p",
        "seed", "stop", "stop_token_ids", "frequency_penalty", "presence_penalty", "repetition_penalty",
        "logit_bias", "min_tokens", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
        "include_stop_str_in_output", "bad_words", "allowed_token_ids", "response_format", "structured_outputs",
        "request_id",
    }
)
# OpenAI's bookkeeping: accepted, changes no answer (vLLM ignores these too).
BOOKKEEPING = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "parallel_tool_calls"}
)
# Fields served at their do-nothing values only: field -> (those values, why not others).
ONLY_DEFAULT: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "one choice per request is served (n=1)"),
    "stream": ((None, False), "batch answers are not streamed"),
    "stream_options": ((None,), "batch answers are not streamed"),
    "logprobs": ((None, False), "log-probabilities are not returned"),
    "top_logprobs": ((None, 0), "log-probabilities are not returned"),
    "tools": ((None, []), "tools are not served"),
    "tool_choice": ((None, "none", "auto"), "tools are not served"),
    "use_beam_search": ((None, False), "beam search is not served"),
    "echo": ((None, False), "echo is not served"),
    "add_generation_prompt": ((None, True), "the assistant's turn is always opened"),
    "continue_final_message": ((None, False), "continuing the final message is not served"),
    "add_special_tokens": ((None, False), "the chat template writes the special tokens"),
    "priority": ((None, 0), "requests have no priorities here"),
}
# tasks.chat.sampling fields that have the same name in a request body.
_DEFAULTABLE = ("temperature", "top_p", "top_k", "min_tokens", "repetition_penalty", "ignore_eos", "seed")


class ChatConfig(TaskConfig):
    context_policy: Optional[Literal["reject"]] = Field(
        None,
        description="A conversation is never truncated or split: one whose prompt leaves no room for an answer "
        "token is an error record of kind too_long (the only policy, whatever engine.context_policy says).",
    )
    sampling: SamplingOverride = Field(
        default_factory=SamplingOverride,
        description="Defaults for what a request body leaves unset (the body wins); then OpenAI's defaults "
        "(temperature 1, top_p 1; max_tokens: the room the prompt leaves in the context).",
    )

    @field_validator("prompt")
    @classmethod
    def _no_prompt(cls, v: PromptOverride) -> PromptOverride:
        if v.system is not None or v.user is not None:
            raise ValueError("the chat task takes its messages from each request; it has no prompt to override")
        return v


class Chat(Task):
    name = "chat"
    description = "Answers OpenAI chat-completion requests (input.format openai_batch), one per line."
    config_model = ChatConfig
    extra_columns = [
        # When the answer was made (Unix seconds): the chat.completion object's `created`.
        pa.field("created", pa.int64()),
    ]
    default_system = ""
    default_user = "{text}"
    split_mode = None
    default_context_policy = "reject"
    context_policies = ("reject",)
    input_format = "openai_batch"

    def for_text(self, text: str) -> "Task":
        try:
            body = json.loads(text)
        except ValueError as e:
            raise TaskInputError(ErrorKind.INVALID_REQUEST, f"the request body is not JSON: {e}") from None
        if type(body) is not dict:
            raise TaskInputError(ErrorKind.INVALID_REQUEST, "the request body is not a JSON object")
        messages, params = chat_request(body, self.cfg.sampling)
        return _ChatRequest(self.cfg, messages, params)

    def parse(self, completion: Completion) -> dict[str, Any]:
        # The answer as generated (no strip): it is the assistant message's content.
        return {"output_text": completion.text, "created": int(time.time())}


class _ChatRequest(Chat):
    """The chat task bound to one request: its messages and its sampling parameters."""

    def __init__(self, cfg: ChatConfig, messages: list[dict[str, str]], params: Any):
        super().__init__(cfg)
        self._messages = messages
        self._params = params  # what Task.sampling_params() returns

    def for_text(self, text: str) -> "Task":
        return self

    def messages(self, text: str) -> list[dict[str, str]]:
        return self._messages

    def max_output_tokens(self) -> int:
        # What the prompt must leave room for: one token. The answer then takes up to its
        # max_tokens of the room left (vLLM's engine stops every request at the context's end).
        return 1


def chat_request(body: dict[str, Any], defaults: Optional[SamplingOverride] = None) -> tuple[list[dict[str, str]], Any]:
    """(chat messages, vLLM SamplingParams) of one chat-completion body, or TaskInputError."""
    from pydantic import ValidationError
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    for key, value in body.items():
        if key in ONLY_DEFAULT:
            allowed, why = ONLY_DEFAULT[key]
            if not any(value == v and type(value) is type(v) for v in allowed):
                raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"body.{key}={json.dumps(value)[:80]}: {why}")
        elif key not in SERVED and key not in BOOKKEEPING:
            raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"body.{key} is not served here")
    if defaults is not None:
        given = defaults.as_kwargs()
        extra = {k: given[k] for k in _DEFAULTABLE if k in given and body.get(k) is None}
        if "max_tokens" in given and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            extra["max_tokens"] = given["max_tokens"]
        body = {**body, **extra}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # max_tokens: deprecated by OpenAI, served
            req = ChatCompletionRequest.model_validate(body)
            requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        messages = _messages(req.messages)
        # No server defaults beyond those merged into the body: the model's generation_config
        # is not consulted (vLLM's server would take temperature/top_p from it when it has them).
        params = req.to_sampling_params(requested, {})
    except ValidationError as e:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, _describe(e)) from None
    except TaskInputError:
        raise
    except (ValueError, TypeError) as e:  # vLLM's own checks (VLLMValidationError is a ValueError)
        raise TaskInputError(ErrorKind.INVALID_REQUEST, f"{type(e).__name__}: {e}") from None
    return messages, params


def _messages(given: list[Any]) -> list[dict[str, str]]:
    """Text-only chat messages for the chat template, as vLLM builds them for templates that
    take string content: text parts joined with a line break, no content an empty string."""
    if not given:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, "body.messages is empty")
    out = []
    for i, m in enumerate(given):
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"body.messages.{i}: tool calls and tool messages are not served")
        content = m.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            texts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if kind != "text":
                    raise TaskInputError(
                        ErrorKind.UNSUPPORTED_REQUEST, f"body.messages.{i}.content.{j}: {kind} parts are not served (text only)"
                    )
                texts.append(part["text"])
            text = "\n".join(texts)
        msg = {"role": role, "content": text}
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _describe(e: Any) -> str:
    """A pydantic ValidationError in one line: the first few fields and what is wrong."""
    errors = e.errors()
    shown = []
    for err in errors[:3]:
        loc = ".".join(str(x) for x in err["loc"])
        shown.append(f"body.{loc}: {err['msg']}" if loc else err["msg"])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(shown) + more
