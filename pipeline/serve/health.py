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

    def _progress(self) -> float:
        m = self.engine.metrics()
        return m.get("prompt_tokens", 0.0) + m.get("generation_tokens", 0.0) + float(self.engine.finished_requests)

    def problem(self) -> Optional[str]:
        """Why the engine cannot serve, or None."""
        if self.engine.is_dead():
            return "the vLLM engine process died"
        now = time.monotonic()
        tokens = self._progress()
        if tokens != self._tokens or not self.engine.in_flight:
            self._tokens, self._moved_at = tokens, now
            return None
        stalled = now - self._moved_at
        if stalled > self.stall_timeout_s:
            return (
                f"the engine has had {self.engine.in_flight} request(s) in flight and computed no token "
                f"for {stalled:.0f}s (health.stall_timeout_s={self.stall_timeout_s:g})"
            )
        return None

    def check(self) -> None:
        why = self.problem()
        if why is not None:
            raise EngineUnhealthy(why)
