"""Chat: OpenAI chat-completion and completion requests, one per row (`input.format: openai_batch`).

A row's text is one request, `{"url": ..., "body": ...}` (`request_text`; the lines of an
OpenAI batch file, pipeline/io/formats/openai_batch.py). `for_text` validates the body
into an `OpenAIRequest` (pipeline/tasks/openai_request.py: vLLM's own request models, the
same parser as the Serve endpoint's OpenAI routes; what is served and what is refused is
said there) and binds the task to it, so that `execute()` runs it like any task's text. The batch path adds to that parser:

- one prompt per completion request line (several in one body are an unsupported_request
  error record), and no streaming;
- what a body leaves unset comes from `tasks.chat.sampling` first; then OpenAI's defaults
  (completions: max_tokens 16);
- max_tokens unset (chat): the answer may fill the room the prompt leaves in the context;
  set past that room: the answer stops at the context's end (finish_reason 'length'), both
  as vLLM's server does. A prompt that leaves no room for one token is a too_long error
  record (a request is never truncated or split);
- `model` is accepted and changes nothing: this job's model answers every line (vLLM's
  server refuses another name).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal, Optional

import pyarrow as pa
from pydantic import Field, field_validator

from pipeline.errors import ErrorKind
from pipeline.tasks.base import Completion, PromptOverride, SamplingOverride, Task, TaskConfig, TaskInputError
from pipeline.tasks.openai_request import CHAT_URL, COMPLETIONS_URL, URLS, OpenAIRequest, completion_prompt_ids, parse_request

# OpenAI's default max_tokens for a completion (vLLM's CompletionRequest says the same).
COMPLETION_MAX_TOKENS = 16


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
        req = parse_request(url, body, self.cfg.sampling)
        if len(req.prompts) > 1:
            raise TaskInputError(ErrorKind.UNSUPPORTED_REQUEST,
                                 f"body.prompt holds {len(req.prompts)} prompts; one prompt per request line is served")
        max_tokens = req.max_tokens
        if max_tokens is None and url == COMPLETIONS_URL:
            max_tokens = COMPLETION_MAX_TOKENS
        return _BoundRequest(self.cfg, req, req.sampling_params(max_tokens))

    def parse(self, completion: Completion) -> dict[str, Any]:
        # The answer as generated (no strip): it is the message's content or the completion.
        return {"output_text": completion.text, "url": self.url, "created": int(time.time())}


class _BoundRequest(Chat):
    """The chat task bound to one request: its messages (chat, through the chat template) or
    its raw prompt (completions, no template), and its sampling."""

    def __init__(self, cfg: ChatConfig, request: OpenAIRequest, params: Any):
        super().__init__(cfg)
        self.request = request
        self.url = request.url
        self._params = params  # what Task.sampling_params() returns

    def for_text(self, text: str) -> "Task":
        return self

    def messages(self, text: str) -> list[dict[str, str]]:
        return self.request.messages

    def prompt_ids(self, tokenizer: Any) -> list[int]:
        if self.url == CHAT_URL:
            return super().prompt_ids(tokenizer)
        return completion_prompt_ids(self.request.prompts[0], self.request.add_special_tokens, tokenizer)

    def max_output_tokens(self) -> int:
        # What the prompt must leave room for: one token. The answer then takes up to its
        # max_tokens of the room left (vLLM's engine stops every request at the context's end,
        # as vLLM's server caps max_tokens there).
        return 1


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
