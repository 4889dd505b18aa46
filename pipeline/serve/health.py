"""Health follows the engine.

- liveness: the replica's HTTP app answers (no engine involved, no auth);
- readiness: the engine is up, alive and making progress;
- Ray Serve's `check_health` on the replica raises when the engine is dead or stuck, so
  Serve stops routing to the replica and starts a replacement.

Stuck means: requests in flight, yet no token computed (prompt or output) for
`health.stall_timeout_s`. Counting tokens rather than finished requests keeps long
generations under heavy load from looking stuck.
"""

from __future__ import annotations

import time
from typing import Any, Optional


class EngineUnhealthy(RuntimeError):
    """Raised by the replica's health check: Ray Serve replaces the replica."""


class EngineHealth:
    def __init__(self, engine: Any, stall_timeout_s: float):
        self.engine = engine
        self.stall_timeout_s = stall_timeout_s
        self._tokens: Optional[float] = None
        self._moved_at = time.monotonic()
        self._stalled: Optional[str] = None  # the last full check's verdict

    def _progress(self) -> float:
        m = self.engine.metrics()
        return m.get("prompt_tokens", 0.0) + m.get("generation_tokens", 0.0) + float(self.engine.finished_requests)

    def problem(self) -> Optional[str]:
        """Why the engine cannot serve, or None: the full check (reads the engine's counters),
        for Serve's periodic health check and the readiness route."""
        if self.engine.is_dead():
            return "the vLLM engine process died"
        now = time.monotonic()
        tokens = self._progress()
        if tokens != self._tokens or not self.engine.in_flight:
            self._tokens, self._moved_at, self._stalled = tokens, now, None
            return None
        stalled = now - self._moved_at
        if stalled > self.stall_timeout_s:
            self._stalled = (
                f"the engine has had {self.engine.in_flight} request(s) in flight and computed no token "
                f"for {stalled:.0f}s (health.stall_timeout_s={self.stall_timeout_s:g})"
            )
        return self._stalled

    def quick_problem(self) -> Optional[str]:
        """The same verdict without reading counters: cheap enough for every request."""
        if self.engine.is_dead():
            return "the vLLM engine process died"
        return self._stalled

    def check(self) -> None:
        why = self.problem()
        if why is not None:
            raise EngineUnhealthy(why)
