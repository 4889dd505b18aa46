"""What the engine gives back for one request, independent of vLLM's own classes.

Tasks parse a `Completion`; tests build them by hand; the engine wrapper fills them from
vLLM's `RequestOutput`. Nothing here imports vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Completion:
    """The generated text of one request, with what parsing and scoring need."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Optional[str]  # 'stop' (EOS or a stop string), 'length' (max_tokens), 'abort'
    cumulative_logprob: Optional[float] = None
    # Per generated position, the top log-probabilities vLLM returned (token id -> logprob),
    # when the request asked for `logprobs`; empty otherwise.
    top_logprobs: tuple[dict[int, float], ...] = ()


@dataclass(frozen=True)
class Generation:
    """One finished request: the completion plus the prompt length it was computed from."""

    completion: Completion
    prompt_tokens: int


@dataclass(frozen=True)
class StreamChunk:
    """One step of a streamed request: the new text since the last chunk."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Optional[str]  # set on the last chunk only
    prompt_tokens: int
