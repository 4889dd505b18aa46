"""A fake engine for the endpoint's fast tests.

No vLLM engine is started here: the app's own logic (validation, limits, admission, auth,
error answers, timeouts) is what these tests exercise, in milliseconds. The same routes
run on a real engine behind real Ray Serve in test_endpoint.py and test_resilience.py.
"""

from __future__ import annotations

import asyncio
import math

from pipeline.engine.engine import EngineDead
from pipeline.engine.outputs import Completion, Generation, StreamChunk


class FakeEngine:
    """Answers from the sampling parameters: the first allowed label under structured
    outputs, else `max_tokens` words (at most 6). `delay` seconds per request (or per
    streamed word); `dead` makes every request fail as a dead engine does."""

    def __init__(self, tokenizer, delay: float = 0.0, empty_first_chunk: bool = False):
        self.tokenizer = tokenizer
        self.delay = delay
        # Streams start with a chunk of no text (as vLLM's do when a token is part of a character).
        self.empty_first_chunk = empty_first_chunk
        self.dead = False
        self.in_flight = 0
        self.finished_requests = 0
        self.cancelled = 0
        self.prompts: list[list[int]] = []
        self.params: list = []  # each request's SamplingParams, in arrival order

    def _answer(self, params) -> tuple[str, int, str]:
        so = getattr(params, "structured_outputs", None)
        if so is not None and so.choice:
            return so.choice[0], 1, "stop"
        n = min(params.max_tokens or 16, 6)
        return " ".join(["word"] * n), n, "length" if n == params.max_tokens else "stop"

    async def agenerate(self, prompt, params, request_id=None) -> Generation:
        self.in_flight += 1
        self.prompts.append(list(prompt))
        self.params.append(params)
        try:
            await asyncio.sleep(self.delay)
            if self.dead:
                raise EngineDead("the fake engine is dead")
            text, n, finish = self._answer(params)
            self.finished_requests += 1
            return Generation(Completion(text, tuple(range(n)), finish, math.log(0.75)), len(prompt))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    async def astream(self, prompt, params, request_id=None):
        self.in_flight += 1
        try:
            text, n, finish = self._answer(params)
            words = text.split(" ")
            if self.empty_first_chunk:
                await asyncio.sleep(self.delay)
                yield StreamChunk("", (0,), None, len(prompt))
            for i, w in enumerate(words):
                await asyncio.sleep(self.delay)
                if self.dead:
                    raise EngineDead("the fake engine is dead")
                last = i == len(words) - 1
                yield StreamChunk((" " if i else "") + w, (i,), finish if last else None, len(prompt))
            self.finished_requests += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1

    def is_dead(self) -> bool:
        return self.dead

    def metrics(self) -> dict[str, float]:
        return {"num_requests_running": float(self.in_flight)}
