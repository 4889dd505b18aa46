"""Chat: OpenAI chat-completion and completion requests, one per row (`input.format: openai_batch`).

A row's text is one request, `{"url": ..., "body": ...}` (`request_text`; the lines of an
OpenAI batch file, pipeline/io/formats/openai_batch.py). `for_text` checks the body with
vLLM's own request models (`ChatCompletionRequest`, `CompletionRequest`: what `vllm serve`
and `vllm run-batch` take) and binds the task to it, so that `execute()` runs it like any
task's text:

- /v1/chat/completions: the prompt is the request's messages, rendered through the model's
  chat template as every task's prompt is (pipeline/tasks/prompting.py); text content parts
  are joined with a line break, as vLLM joins them;
- /v1/completions: the prompt is the body's `prompt` (a string, or token ids), tokenized as
  vLLM's server does (special tokens added unless `add_special_tokens: false`), no template;
- the sampling parameters come from the body through vLLM's own `to_sampling_params`, so a
  field means what it means to vLLM's server: OpenAI's defaults (temperature 1, top_p 1;
  completions: max_tokens 16), max_completion_tokens before max_tokens, stop, seed,
  penalties, logit_bias, response_format (JSON schemas through structured outputs), ...
  What a body leaves unset comes from `tasks.chat.sampling` first;
- max_tokens unset (chat): the answer may fill the room the prompt leaves in the context;
  set past that room: the answer stops at the context's end (finish_reason 'length'), both
  as vLLM's server does. A prompt that leaves no room for one token is a too_long error
  record (a request is never truncated or split).

Not served, an unsupported_request error record naming the field: n > 1, several prompts in
one completion request, best_of, suffix, streaming, tools and tool calls, logprobs, content
other than text (images, audio, files), and vLLM's options
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

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
URLS = (CHAT_URL, COMPLETIONS_URL)

# Body fields served as vLLM serves them, both endpoints.
_SAMPLING = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
        "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias", "min_tokens", "ignore_eos",
        "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output", "bad_words",
        "allowed_token_ids", "response_format", "structured_outputs", "request_id",
    }
)
SERVED = {
    CHAT_URL: _SAMPLING | {"messages", "max_completion_tokens"},
    # add_special_tokens: the prompt is tokenized as vLLM's server does it (BOS added by default).
    COMPLETIONS_URL: _SAMPLING | {"prompt", "add_special_tokens"},
}
# OpenAI's bookkeeping: accepted, changes no answer (vLLM ignores these too).
BOOKKEEPING = frozenset(
    {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier", "parallel_tool_calls"}
)
_NOT_STREAMED = "batch answers are not streamed"
_NO_LOGPROBS = "log-probabilities are not returned"
# Fields served at their do-nothing values only: field -> (those values, why not others).
_ONLY_DEFAULT_BOTH: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((None, 1), "one choice per request is served (n=1)"),
    "stream": ((None, False), _NOT_STREAMED),
    "stream_options": ((None,), _NOT_STREAMED),
    "use_beam_search": ((None, False), "beam search is not served"),
    "echo": ((None, False), "echo is not served"),
    "priority": ((None, 0), "requests have no priorities here"),
}
ONLY_DEFAULT: dict[str, dict[str, tuple[tuple[Any, ...], str]]] = {
    CHAT_URL: {
        **_ONLY_DEFAULT_BOTH,
        "logprobs": ((None, False), _NO_LOGPROBS),
        "top_logprobs": ((None, 0), _NO_LOGPROBS),
        "tools": ((None, []), "tools are not served"),
        "tool_choice": ((None, "none", "auto"), "tools are not served"),
        "add_generation_prompt": ((None, True), "the assistant's turn is always opened"),
        "continue_final_message": ((None, False), "continuing the final message is not served"),
        "add_special_tokens": ((None, False), "the chat template writes the special tokens"),
    },
    COMPLETIONS_URL: {
        **_ONLY_DEFAULT_BOTH,
        "logprobs": ((None,), _NO_LOGPROBS),
        "best_of": ((None, 1), "one candidate per request is generated (best_of=1)"),
        "suffix": ((None, ""), "suffixes (insertion) are not served"),
    },
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
    description = "Answers OpenAI chat-completion and completion requests (input.format openai_batch), one per line."
    config_model = ChatConfig
    extra_columns = [
        # The request's endpoint (CHAT_URL or COMPLETIONS_URL): which object the answer is.
        pa.field("url", pa.string()),
        # When the answer was made (Unix seconds): the response object's `created`.
        pa.field("created", pa.int64()),
    ]
    default_system = ""
    default_user = "{text}"
    split_mode = None
    default_context_policy = "reject"
    context_policies = ("reject",)
    input_format = "openai_batch"
    url: Optional[str] = None  # set on the task bound to one request

    def for_text(self, text: str) -> "Task":
        url, body = read_request(text)
        if url == CHAT_URL:
            messages, params = chat_request(body, self.cfg.sampling)
            return _ChatRequest(self.cfg, messages, params)
        prompt, add_special, params = completion_request(body, self.cfg.sampling)
        return _CompletionRequest(self.cfg, prompt, add_special, params)

    def parse(self, completion: Completion) -> dict[str, Any]:
        # The answer as generated (no strip): it is the message's content or the completion.
        return {"output_text": completion.text, "url": self.url, "created": int(time.time())}


class _ChatRequest(Chat):
    """The chat task bound to one chat-completion request: its messages and sampling."""

    url = CHAT_URL

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
        # max_tokens of the room left (vLLM's engine stops every request at the context's end,
        # as vLLM's server caps max_tokens there).
        return 1


class _CompletionRequest(_ChatRequest):
    """The chat task bound to one completion request: a raw prompt, no chat template."""

    url = COMPLETIONS_URL

    def __init__(self, cfg: ChatConfig, prompt: str | list[int], add_special_tokens: bool, params: Any):
        super().__init__(cfg, [], params)
        self._prompt = prompt
        self._add_special = add_special_tokens

    def prompt_ids(self, tokenizer: Any) -> list[int]:
        if isinstance(self._prompt, list):
            vocab = len(tokenizer)
            if max(self._prompt) >= vocab:
                raise TaskInputError(ErrorKind.INVALID_REQUEST,
                                     f"body.prompt: token id {max(self._prompt)} is outside the vocabulary ({vocab} tokens)")
            return list(self._prompt)
        return tokenizer.encode(self._prompt, add_special_tokens=self._add_special)


def request_text(url: str, body: dict[str, Any]) -> str:
    """A row's text: the request without its envelope's id and method (read_request's input)."""
    return json.dumps({"url": url, "body": body}, ensure_ascii=False, separators=(",", ":"))


def read_request(text: str) -> tuple[str, dict[str, Any]]:
    """(url, body) of a row's text, or TaskInputError."""
    try:
        req = json.loads(text)
    except ValueError as e:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, f"the request is not JSON: {e}") from None
    if type(req) is not dict or type(req.get("body")) is not dict:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, "the request is not {url, body} with a JSON object body")
    if req.get("url") not in URLS:
        raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"url {req.get('url')!r} is not served here")
    return req["url"], req["body"]


def _check_fields(url: str, body: dict[str, Any]) -> None:
    only_default = ONLY_DEFAULT[url]
    for key, value in body.items():
        if key in only_default:
            allowed, why = only_default[key]
            if not any(value == v and type(value) is type(v) for v in allowed):
                raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"body.{key}={json.dumps(value)[:80]}: {why}")
        elif key not in SERVED[url] and key not in BOOKKEEPING:
            raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"body.{key} is not served here")


def _with_defaults(body: dict[str, Any], defaults: Optional[SamplingOverride], max_keys: tuple[str, ...]) -> dict[str, Any]:
    """The body with tasks.chat.sampling filled in where it leaves a field unset."""
    if defaults is None:
        return body
    given = defaults.as_kwargs()
    extra = {k: given[k] for k in _DEFAULTABLE if k in given and body.get(k) is None}
    if "max_tokens" in given and all(body.get(k) is None for k in max_keys):
        extra["max_tokens"] = given["max_tokens"]
    return {**body, **extra}


def _validated(model: Any, body: dict[str, Any], build: Any) -> Any:
    """`build(model.model_validate(body))`, vLLM's and pydantic's complaints as TaskInputError."""
    from pydantic import ValidationError
    from vllm.exceptions import VLLMClientError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # max_tokens: deprecated by OpenAI, served
            return build(model.model_validate(body))
    except ValidationError as e:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, _describe(e)) from None
    except TaskInputError:
        raise
    except (VLLMClientError, ValueError, TypeError) as e:  # vLLM's own checks, in validators and to_sampling_params
        raise TaskInputError(ErrorKind.INVALID_REQUEST, f"{type(e).__name__}: {e}") from None


def chat_request(body: dict[str, Any], defaults: Optional[SamplingOverride] = None) -> tuple[list[dict[str, str]], Any]:
    """(chat messages, vLLM SamplingParams) of one chat-completion body, or TaskInputError."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    _check_fields(CHAT_URL, body)
    body = _with_defaults(body, defaults, ("max_tokens", "max_completion_tokens"))

    def build(req: Any) -> tuple[list[dict[str, str]], Any]:
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        # No server defaults beyond those merged into the body: the model's generation_config
        # is not consulted (vLLM's server would take temperature/top_p from it when it has them).
        return _messages(req.messages), req.to_sampling_params(requested, {})

    return _validated(ChatCompletionRequest, body, build)


def completion_request(
    body: dict[str, Any], defaults: Optional[SamplingOverride] = None
) -> tuple[str | list[int], bool, Any]:
    """(prompt text or token ids, add special tokens, vLLM SamplingParams) of one completion
    body (/v1/completions), or TaskInputError. One prompt per request: a list of several is
    a batch of its own, which OpenAI answers with one choice each (not served)."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    _check_fields(COMPLETIONS_URL, body)
    if "prompt" not in body:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, "body.prompt: Field required")
    body = _with_defaults(body, defaults, ("max_tokens",))

    def build(req: Any) -> tuple[str | list[int], bool, Any]:
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            if len(prompt) != 1:
                raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST,
                                     f"body.prompt holds {len(prompt)} prompts; one prompt per request line is served")
            prompt = prompt[0]
        if prompt is None or len(prompt) == 0:
            raise TaskInputError(ErrorKind.INVALID_REQUEST, "body.prompt is empty")
        # OpenAI's default of 16 tokens is the model's (vLLM's CompletionRequest.max_tokens).
        return prompt, req.add_special_tokens, req.to_sampling_params(req.max_tokens, {})

    return _validated(CompletionRequest, body, build)


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
