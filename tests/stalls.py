"""How long the machine froze during a timed step, so that a timing assertion counts only
the time the code under test had.

Seen on this machine (2 cores, a VM) while an engine runs: every process, even an idle
one sleeping 10 ms at a time at normal priority, stops for 0.3 to 7 s several times a
minute; with plain CPU burners instead of an engine, never. A test that asserts "answered
within 1 s" or "aborted within 1.5 s" fails when such a freeze lands in its window, for no
fault of the code. `StallWatch` measures the freezes from a thread of the test's process
(which freezes with the rest): each wake-up more than `slack` late counts as a stall.
"""

from __future__ import annotations

import threading
import time

from typing_extensions import Self


class StallWatch:
    """Seconds of freezes since it started (a context manager, or start()/stop())."""

    def __init__(self, tick: float = 0.01, slack: float = 0.1):
        self.tick, self.slack = tick, slack
        self._stalled = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=5)
        return self._stalled

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def stalled(self) -> float:
        """Seconds lost to freezes so far (each late wake-up's delay past tick + slack)."""
        return self._stalled

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            late = now - last - self.tick
            if late > self.slack:
                self._stalled += late
            last = now
