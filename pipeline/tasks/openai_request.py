"""OpenAI chat-completion and completion request bodies, validated into one typed request
(`OpenAIRequest`): the one parser behind the batch path (`input.format: openai_batch`, the
chat task, pipeline/tasks/chat.py) and the Serve endpoint's /v1/chat/completions and
/v1/completions (pipeline/serve/openai_compat.py).

A body is checked by vLLM's own request models (`ChatCompletionRequest`, `CompletionRequest`:
what `vllm serve` and `vllm run-batch` take), so that a field means what it means to vLLM's
server:

- /v1/chat/completions: the messages, text only, for the model's chat template (rendered as
  every task's prompt is, pipeline/tasks/prompting.py); text content parts are joined with a
  line break, as vLLM joins them for templates that take string content; 'developer' (the
  newer name of 'system') becomes 'system', which chat templates know;
- /v1/completions: the prompts (a string, token ids, or a list of either), tokenized as
  vLLM's server does (special tokens added unless `add_special_tokens: false`), no template;
- the sampling parameters through vLLM's own `to_sampling_params`: OpenAI's defaults
  (temperature 1, top_p 1), max_completion_tokens before max_tokens, stop, seed, penalties,
  logit_bias, response_format (JSON schemas through structured outputs), ...

Not served, an unsupported_request error naming the field: n > 1, best_of, suffix, tools
and tool calls, logprobs, content other than text (images, audio, files), vLLM's options that
change the prompt or the answer's form (echo, chat_template, ...), and streaming where the
caller does not stream (the batch path). OpenAI's bookkeeping fields (metadata, store,
user, ...) are accepted and change nothing. What each caller adds stays with it: the batch
path answers one prompt per line and fills unset fields from tasks.chat.sampling; the
endpoint has its HTTP schema (the OpenAPI document, limits), the served model's name and
its cap on max_tokens.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from pipeline.errors import ErrorKind
from pipeline.tasks.base import SamplingOverride, TaskInputError

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
# Served only by callers that stream (the endpoint); read here, not by vLLM's models.
_STREAMING = ("stream", "stream_options")
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

Prompt = Union[str, list[int]]


@dataclass(frozen=True)
class OpenAIRequest:
    """One validated request body: what to render and how to sample."""

    url: str  # CHAT_URL or COMPLETIONS_URL
    model: Optional[str]  # the body's model name (the endpoint checks it; the batch path ignores it)
    messages: list[dict[str, str]]  # chat: text-only messages for the chat template ([] for completions)
    prompts: list[Prompt]  # completions: each prompt, text or token ids ([] for chat)
    add_special_tokens: bool  # completions: tokenize each text prompt with the tokenizer's special tokens
    # What the body asks for (max_completion_tokens before max_tokens); None where it leaves
    # it unset: the caller chooses (the room the prompt leaves, OpenAI's 16 for a completion, ...).
    max_tokens: Optional[int]
    stream: bool  # answer as server-sent events (only where the caller streams)
    include_usage: bool  # streamed: a last chunk with the token usage
    validated: Any = field(repr=False)  # vLLM's request model, for its to_sampling_params

    def sampling_params(self, max_tokens: Optional[int], stream_interval: Optional[int] = None) -> Any:
        """vLLM SamplingParams as vLLM's server builds them from this body, with `max_tokens`
        (None: up to the context's end); the whole answer at the end (FINAL_ONLY: a caller
        that streams asks the engine for its own copy). TaskInputError where vLLM refuses
        the values (min_tokens above max_tokens, ...)."""
        # No server defaults beyond those merged into the body: the model's generation_config
        # is not consulted (vLLM's server would take temperature/top_p from it when it has them).
        params = _checked(lambda: self.validated.to_sampling_params(max_tokens, {}))
        if stream_interval is not None:
            params.stream_interval = stream_interval
        return params


def parse_request(
    url: str, body: dict[str, Any], defaults: Optional[SamplingOverride] = None, streaming: bool = False
) -> OpenAIRequest:
    """The request in one body for `url` (CHAT_URL or COMPLETIONS_URL), or TaskInputError
    (invalid_request or unsupported_request, naming the field). `defaults` fill what the
    body leaves unset (the body wins); `streaming`: the caller can stream its answer."""
    if url not in URLS:
        raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"url {url!r} is not served here")
    _check_fields(url, body, streaming)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    body = {k: v for k, v in body.items() if k not in _STREAMING}
    if url == CHAT_URL:
        return _chat(_with_defaults(body, defaults, ("max_tokens", "max_completion_tokens")), stream, include_usage)
    if "prompt" not in body:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, "body.prompt: Field required")
    return _completion(_with_defaults(body, defaults, ("max_tokens",)), stream, include_usage)


def completion_prompt_ids(prompt: Prompt, add_special_tokens: bool, tokenizer: Any) -> list[int]:
    """A completion prompt's token ids, as vLLM's server tokenizes it (no chat template)."""
    if isinstance(prompt, list):
        vocab = len(tokenizer)
        if max(prompt) >= vocab:
            raise TaskInputError(
                ErrorKind.INVALID_REQUEST, f"body.prompt: token id {max(prompt)} is outside the vocabulary ({vocab} tokens)"
            )
        return list(prompt)
    return tokenizer.encode(prompt, add_special_tokens=add_special_tokens)


def _chat(body: dict[str, Any], stream: bool, include_usage: bool) -> OpenAIRequest:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    req = _checked(lambda: ChatCompletionRequest.model_validate(body))
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return OpenAIRequest(CHAT_URL, req.model, _messages(req.messages), [], False, requested, stream, include_usage, req)


def _completion(body: dict[str, Any], stream: bool, include_usage: bool) -> OpenAIRequest:
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    req = _checked(lambda: CompletionRequest.model_validate(body))
    prompt = req.prompt
    # One prompt (a string or token ids), or a list of them.
    prompts = [prompt] if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)) else list(prompt or [])
    if not prompts or any(len(p) == 0 for p in prompts):
        raise TaskInputError(ErrorKind.INVALID_REQUEST, "body.prompt is empty")
    # Unset, vLLM's model says 16 (OpenAI's default): the caller decides, as for chat.
    requested = req.max_tokens if body.get("max_tokens") is not None else None
    return OpenAIRequest(COMPLETIONS_URL, req.model, [], prompts, req.add_special_tokens, requested, stream, include_usage, req)


def _check_fields(url: str, body: dict[str, Any], streaming: bool) -> None:
    only_default = ONLY_DEFAULT[url]
    for key, value in body.items():
        if key in only_default and not (streaming and key in _STREAMING):
            allowed, why = only_default[key]
            if not any(value == v and type(value) is type(v) for v in allowed):
                raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST, f"body.{key}={json.dumps(value)[:80]}: {why}")
        elif key not in SERVED[url] and key not in BOOKKEEPING and key not in _STREAMING:
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


def _checked(build: Any) -> Any:
    """`build()`, vLLM's and pydantic's complaints as TaskInputError (invalid_request)."""
    from pydantic import ValidationError
    from vllm.exceptions import VLLMClientError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # max_tokens: deprecated by OpenAI, served
            return build()
    except ValidationError as e:
        raise TaskInputError(ErrorKind.INVALID_REQUEST, _describe(e)) from None
    except TaskInputError:
        raise
    except (VLLMClientError, ValueError, TypeError) as e:  # vLLM's own checks, in validators and to_sampling_params
        raise TaskInputError(ErrorKind.INVALID_REQUEST, f"{type(e).__name__}: {e}") from None


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
        # 'developer' is the newer name of 'system'; chat templates know the latter.
        msg = {"role": "system" if role == "developer" else role, "content": text}
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
