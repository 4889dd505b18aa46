"""Progress: inference actors report each committed part to a tiny Ray actor; the driver
polls it and draws a bar on a terminal (bytes with ETA, rows, tokens/s) or logs lines."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Optional

logger = logging.getLogger(__name__)

FIELDS = ("rows", "ok", "errors", "prompt_tokens", "output_tokens", "bytes_read", "requests")


class ProgressCounter:
    """Runs as a Ray actor (num_cpus=0). Counters only; no locks needed (one thread)."""

    def __init__(self) -> None:
        self.totals = {k: 0 for k in FIELDS}
        self.engines: dict[str, dict[str, float]] = {}  # engine instance -> start-up facts
        self.metrics: dict[str, dict[str, float]] = {}  # engine instance -> its latest counters

    def engine_ready(self, engine: str, load_seconds: float, ready_at: float, created_at: float,
                     facts: Optional[dict[str, Any]] = None) -> None:
        """`facts`: Engine.describe() (device, dtype; on the CPU its compute threads and cores)."""
        self.engines[engine] = {"load_seconds": load_seconds, "ready_at": ready_at, "created_at": created_at, **(facts or {})}

    def engine_metrics(self, engine: str, metrics: dict[str, float]) -> None:
        """Cumulative counters of one engine instance (a restarted actor is a new instance)."""
        self.metrics[engine] = dict(metrics)

    def engine_report(self) -> dict[str, Any]:
        return {"engines": dict(self.engines), "metrics": dict(self.metrics)}

    def record(self, delta: dict[str, int]) -> None:
        for k, v in delta.items():
            self.totals[k] = self.totals.get(k, 0) + int(v)

    def snapshot(self) -> dict[str, int]:
        return dict(self.totals)


class ProgressReporter:
    """Polls the counter actor from a daemon thread until stopped."""

    def __init__(self, counter: Any, total_bytes: Optional[int], interactive: Optional[bool] = None,
                 interval: float = 1.0, log_every: float = 10.0):
        self.counter = counter
        self.total_bytes = total_bytes if total_bytes and total_bytes > 0 else None
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.interval = interval
        self.log_every = log_every
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = time.monotonic()
        self.last: dict[str, int] = {k: 0 for k in FIELDS}

    def start(self) -> "ProgressReporter":
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)

    def _poll(self) -> dict[str, int]:
        import ray

        try:
            self.last = ray.get(self.counter.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress never breaks a run
            logger.debug("progress poll failed", exc_info=True)
        return self.last

    def _line(self, s: dict[str, int]) -> str:
        el = max(time.monotonic() - self._t0, 1e-9)
        parts = [f"rows {s['rows']:,} committed (task results ok {s['ok']:,}, errors {s['errors']:,})",
                 f"{s['requests']:,} requests done",
                 f"{s['rows'] / el:,.1f} rows/s", f"{s['output_tokens'] / el:,.1f} tok/s"]
        if self.total_bytes:
            frac = min(s["bytes_read"] / self.total_bytes, 1.0)
            eta = (el / frac - el) if frac > 0 else float("nan")
            parts.insert(0, f"{100 * frac:.0f}% of input")
            if frac > 0:
                parts.append(f"ETA {eta:,.0f}s")
        return ", ".join(parts)

    def _loop(self) -> None:
        bar = None
        if self.interactive:
            from tqdm import tqdm

            bar = tqdm(total=self.total_bytes, unit="B", unit_scale=True, desc="input", dynamic_ncols=True)
        last_log = time.monotonic()
        while not self._stop.wait(self.interval):
            s = self._poll()
            if bar is not None:
                bar.update(s["bytes_read"] - bar.n)
                el = max(time.monotonic() - self._t0, 1e-9)
                bar.set_postfix(rows=s["rows"], requests=s["requests"], errors=s["errors"],
                                tok_s=f"{s['output_tokens'] / el:.0f}", refresh=False)
            elif time.monotonic() - last_log >= self.log_every:
                logger.info("progress: %s", self._line(s))
                last_log = time.monotonic()
        s = self._poll()
        if bar is not None:
            bar.update(s["bytes_read"] - bar.n)
            bar.close()
        else:
            logger.info("progress: %s", self._line(s))
