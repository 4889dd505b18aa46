"""Progress of a run, live: what the read stage has read, what the engines have finished.

    read tasks ──read(rows, bytes, requests)──▶ ProgressCounter (a Ray actor on the driver's node)
    inference actors ──engine_loading / engine_ready / finished(delta) / gauges──▶    │
        (their watchdog thread, every second, between commits)                       │
    driver: ProgressReporter polls it every second ◀─────────────────────────────────┘
        ├─ a terminal: a bar over requests (rows x tasks) finished out of planned, tokens/s,
        │  ETA, per-task ok and failed; engine start-up as its own phase
        ├─ no terminal: the same figures as one log line every 10 s
        └─ the run's timeline, OUT/_runs/<run>/timeline.jsonl, for `pipeline report`

The unit of work is a request: one (row, task). Requests planned are known exactly once
the read stage has read every file; until then they are estimated from the bytes read
against the input's total bytes (shown with a "~"). The counter actor also exports these
figures as Ray metrics (`pipeline_*`, Prometheus format; see `RunMetrics`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
from typing import Any, Optional

logger = logging.getLogger(__name__)

TIMELINE_NAME = "timeline.jsonl"


# -- what actors count --------------------------------------------------------------------
class Tally:
    """Finished requests of one actor since its last report: {"ok:<task>": n, "error:<task>": n,
    "truncated:<task>": n, "prompt_tokens": n, "output_tokens": n}. Added to on the actor's
    event loop, taken by its watchdog thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: collections.Counter = collections.Counter()

    def add(self, task: str, ok: bool, prompt_tokens: int = 0, output_tokens: int = 0, truncated: bool = False) -> None:
        with self._lock:
            self._c[f"{'ok' if ok else 'error'}:{task}"] += 1
            if truncated:
                self._c[f"truncated:{task}"] += 1
            self._c["prompt_tokens"] += prompt_tokens
            self._c["output_tokens"] += output_tokens

    def take(self) -> dict[str, int]:
        with self._lock:
            out = dict(self._c)
            self._c.clear()
        return out


@dataclasses.dataclass
class Snapshot:
    """The run as the counter actor sees it at time t."""

    t: float
    actors: int
    tasks: list[str]
    engines_loading: int = 0
    engines_ready: int = 0
    files: int = 0
    files_read: int = 0
    total_bytes: Optional[int] = None
    rows_read: int = 0
    bytes_read: int = 0
    requests_read: int = 0  # requests of the rows read so far (rows x their tasks)
    ok: dict[str, int] = dataclasses.field(default_factory=dict)
    failed: dict[str, int] = dataclasses.field(default_factory=dict)
    truncated: dict[str, int] = dataclasses.field(default_factory=dict)
    prompt_tokens: int = 0
    output_tokens: int = 0
    rows_committed: int = 0
    in_flight: int = 0
    waiting: int = 0
    kv_cache_usage: Optional[float] = None  # the fullest engine's, 0..1
    prefix_cache_hit_rate: Optional[float] = None

    @property
    def done(self) -> int:
        return sum(self.ok.values()) + sum(self.failed.values())

    @property
    def planned_exact(self) -> bool:
        return self.files > 0 and self.files_read >= self.files

    @property
    def planned(self) -> Optional[int]:
        """Requests planned: exact once every file is read, else extrapolated from bytes."""
        if self.planned_exact:
            return self.requests_read
        if self.total_bytes and self.bytes_read and self.requests_read:
            return max(int(round(self.requests_read * self.total_bytes / self.bytes_read)), self.requests_read)
        return None

    @property
    def phase(self) -> str:
        if self.engines_ready == 0 and self.done == 0:
            return "loading" if self.engines_loading else "starting"
        return "running"


class RunMetrics:
    """The run's figures as Ray metrics, exported in Prometheus format by every node's metrics
    agent (a local cluster: `resources.metrics_export_port`; a cluster: `ray start
    --metrics-export-port`). Ray prefixes the names with `ray_`."""

    def __init__(self, run_id: str):
        from ray.util.metrics import Counter, Gauge

        self.tags = {"run_id": run_id}
        keys = ("run_id",)
        self.requests = Counter("pipeline_requests", "Finished (row, task) requests, by task and status (ok, error).",
                                tag_keys=keys + ("task", "status"))
        self.prompt_tokens = Counter("pipeline_prompt_tokens", "Prompt tokens of finished requests.", tag_keys=keys)
        self.output_tokens = Counter("pipeline_output_tokens", "Generated tokens of finished requests.", tag_keys=keys)
        self.rows_read = Counter("pipeline_rows_read", "Input rows read.", tag_keys=keys)
        self.rows_committed = Counter("pipeline_rows_committed", "Rows committed (all their tasks done).", tag_keys=keys)
        self.planned = Gauge("pipeline_requests_planned", "Requests planned (estimated until every file is read).", tag_keys=keys)
        self.throughput = Gauge("pipeline_output_tokens_per_second", "Generated tokens per second, last 30 s.", tag_keys=keys)
        self.rows_per_s = Gauge("pipeline_requests_per_second", "Requests finished per second, last 30 s.", tag_keys=keys)
        self.in_flight = Gauge("pipeline_requests_in_flight", "Requests in the engines now.", tag_keys=keys)
        self.queue = Gauge("pipeline_queue_depth", "Requests waiting in the engines' schedulers.", tag_keys=keys)
        self.kv = Gauge("pipeline_kv_cache_usage", "KV-cache use of each engine, 0 to 1.", tag_keys=keys + ("engine",))
        self.prefix = Gauge("pipeline_prefix_cache_hit_rate", "Prompt tokens served from the prefix cache, 0 to 1.", tag_keys=keys)
        self.engines = Gauge("pipeline_engines_ready", "Engines loaded and serving.", tag_keys=keys)

    def tagged(self, **extra: str) -> dict[str, str]:
        return {**self.tags, **extra}


class ProgressCounter:
    """Runs as a Ray actor (num_cpus=0) on the driver's node. One thread: no locks needed."""

    def __init__(self, run_id: str = "", tasks: Optional[list[str]] = None, actors: int = 1,
                 files: int = 0, total_bytes: Optional[int] = None, export_metrics: bool = True) -> None:
        self.snap = Snapshot(t=time.time(), actors=actors, tasks=list(tasks or []), files=files, total_bytes=total_bytes)
        self.totals: collections.Counter = collections.Counter()  # committed parts: rows, ok, errors, ...
        self.engines: dict[str, dict[str, float]] = {}  # engine instance -> start-up facts
        self.loading: set[str] = set()
        self.seen: dict[str, float] = {}  # engine instance -> its actor's last report
        self.stop_requested = False
        self.metrics: dict[str, dict[str, float]] = {}  # engine instance -> its latest vLLM counters
        self.gauges: dict[str, dict[str, float]] = {}  # engine instance -> in flight, waiting, kv use
        self.first_read_at: Optional[float] = None
        self.last_file_read_at: Optional[float] = None
        self.last_commit_at: Optional[float] = None  # the end of the steady window (engines stop after it)
        self._rates: collections.deque = collections.deque()  # (t, done, output tokens), last 30 s
        self.m: Optional[RunMetrics] = None
        if export_metrics:
            try:
                self.m = RunMetrics(run_id)
            except Exception:  # noqa: BLE001 - metrics are optional, progress is not
                logger.warning("Ray metrics unavailable", exc_info=True)

    # -- the read stage ---------------------------------------------------------------
    def read(self, rows: int, nbytes: int, requests: int) -> None:
        s = self.snap
        s.rows_read += rows
        s.bytes_read += nbytes
        s.requests_read += requests
        self.first_read_at = self.first_read_at or time.time()
        if self.m and rows:
            self.m.rows_read.inc(rows, tags=self.m.tags)
        self._export_planned()

    def file_read(self) -> None:
        self.snap.files_read += 1
        self.last_file_read_at = time.time()
        self._export_planned()

    def _export_planned(self) -> None:
        if self.m and self.snap.planned is not None:
            self.m.planned.set(self.snap.planned, tags=self.m.tags)

    # -- the engines ------------------------------------------------------------------
    def engine_loading(self, engine: str) -> None:
        self.loading.add(engine)
        self.snap.engines_loading = len(self.loading)

    def engine_ready(self, engine: str, load_seconds: float, ready_at: float, created_at: float,
                     facts: Optional[dict[str, Any]] = None) -> None:
        """`facts`: Engine.describe() (device, dtype; on the CPU its compute threads and cores)."""
        self.engines[engine] = {"load_seconds": load_seconds, "ready_at": ready_at, "created_at": created_at, **(facts or {})}
        self.loading.discard(engine)
        self.snap.engines_loading = len(self.loading)
        self.snap.engines_ready = len(self.engines)
        if self.m:
            self.m.engines.set(len(self.engines), tags=self.m.tags)

    def engine_gone(self, engine: str) -> None:
        """An actor that shut down (or is being replaced): its engine serves no more."""
        self.gauges.pop(engine, None)
        if engine in self.engines:
            self.engines[engine]["gone"] = True
        self.snap.engines_ready = sum(1 for e in self.engines.values() if not e.get("gone"))

    def finished(self, engine: str, delta: dict[str, int], gauges: Optional[dict[str, float]] = None) -> bool:
        """Requests an actor finished since its last report, and its engine's gauges now.
        Returns whether the driver asked the engines to stop (`request_stop`)."""
        s = self.snap
        self.seen[engine] = time.time()
        for k, v in delta.items():
            kind, _, task = k.partition(":")
            if kind == "ok":
                s.ok[task] = s.ok.get(task, 0) + v
            elif kind == "error":
                s.failed[task] = s.failed.get(task, 0) + v
            elif kind == "truncated":
                s.truncated[task] = s.truncated.get(task, 0) + v
            elif k in ("prompt_tokens", "output_tokens"):
                setattr(s, k, getattr(s, k) + v)
            if self.m and v and kind in ("ok", "error"):
                self.m.requests.inc(v, tags=self.m.tagged(task=task, status=kind))
        if self.m:
            if delta.get("prompt_tokens"):
                self.m.prompt_tokens.inc(delta["prompt_tokens"], tags=self.m.tags)
            if delta.get("output_tokens"):
                self.m.output_tokens.inc(delta["output_tokens"], tags=self.m.tags)
        if gauges is not None:
            self.gauges[engine] = dict(gauges)
            if "prefix_cache_queries" in gauges:
                self.metrics[engine] = {**self.metrics.get(engine, {}), **gauges}
        self._update_gauges()
        return self.stop_requested

    def _update_gauges(self) -> None:
        s = self.snap
        now = time.time()
        live = list(self.gauges.values())
        s.in_flight = int(sum(g.get("in_flight", 0) for g in live))
        s.waiting = int(sum(g.get("num_requests_waiting", 0) for g in live))
        kv = [g["kv_cache_usage_perc"] for g in live if "kv_cache_usage_perc" in g]
        s.kv_cache_usage = max(kv) if kv else None
        q = sum(m.get("prefix_cache_queries", 0.0) for m in self.metrics.values())
        h = sum(m.get("prefix_cache_hits", 0.0) for m in self.metrics.values())
        s.prefix_cache_hit_rate = h / q if q else None
        self._rates.append((now, s.done, s.output_tokens))
        while len(self._rates) > 2 and now - self._rates[0][0] > 30:
            self._rates.popleft()
        if self.m:
            t = self.m.tags
            self.m.in_flight.set(s.in_flight, tags=t)
            self.m.queue.set(s.waiting, tags=t)
            for engine, g in self.gauges.items():
                if "kv_cache_usage_perc" in g:
                    self.m.kv.set(g["kv_cache_usage_perc"], tags=self.m.tagged(engine=engine[:8]))
            if s.prefix_cache_hit_rate is not None:
                self.m.prefix.set(s.prefix_cache_hit_rate, tags=t)
            (t0, d0, o0), (t1, d1, o1) = self._rates[0], self._rates[-1]
            if t1 > t0:
                self.m.throughput.set((o1 - o0) / (t1 - t0), tags=t)
                self.m.rows_per_s.set((d1 - d0) / (t1 - t0), tags=t)

    # Kept for the run summary (execution._engine_summary).
    def engine_metrics(self, engine: str, metrics: dict[str, float]) -> None:
        """Cumulative counters of one engine instance (a restarted actor is a new instance)."""
        self.metrics[engine] = dict(metrics)

    # -- the end of a run ------------------------------------------------------------
    def all_committed(self) -> bool:
        """Every file read and every row read committed: no engine has work left."""
        s = self.snap
        return s.planned_exact and s.rows_committed >= s.rows_read

    def request_stop(self) -> None:
        """Ask the actors to stop their engines (they hear it within a second)."""
        self.stop_requested = True

    def engines_running(self, within: float = 5.0) -> int:
        """Engines not stopped whose actor reported in the last `within` seconds (an actor
        that died without a word is not waited for)."""
        now = time.time()
        return sum(1 for k, e in self.engines.items() if not e.get("gone") and now - self.seen.get(k, 0) < within)

    def engine_report(self) -> dict[str, Any]:
        read = None
        if self.first_read_at and self.last_file_read_at and self.snap.files_read >= self.snap.files:
            read = self.last_file_read_at - self.first_read_at
        return {"engines": dict(self.engines), "metrics": dict(self.metrics), "read_seconds": read,
                "last_commit_at": self.last_commit_at}

    # -- commits ----------------------------------------------------------------------
    def record(self, delta: dict[str, int]) -> None:
        for k, v in delta.items():
            self.totals[k] += int(v)
        self.snap.rows_committed = self.totals["rows"]
        if delta.get("rows"):
            self.last_commit_at = time.time()
        if self.m and delta.get("rows"):
            self.m.rows_committed.inc(delta["rows"], tags=self.m.tags)

    def snapshot(self) -> Snapshot:
        self.snap.t = time.time()
        return self.snap


# -- the driver's view ----------------------------------------------------------------------
def _engines_missing(s: "Snapshot") -> bool:
    """Fewer engines than actors while work remains (one restarting, one still loading); at
    the end of a run the engines stop on purpose, which is not worth a note."""
    finished = s.planned_exact and s.planned is not None and s.done >= s.planned
    return s.engines_ready < s.actors and not finished


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclasses.dataclass
class Rates:
    """Throughput over the last 30 s, measured from the first finished requests on (start-up
    never dilutes it), and an ETA: requests left at the pace since the first finished ones
    (requests finish in bursts, a batch at a time: the 30 s pace made the ETA jump)."""

    requests_per_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    eta_s: Optional[float] = None


class ProgressReporter:
    """Polls the counter actor from a daemon thread until stopped; draws, logs, records."""

    def __init__(self, counter: Any, interactive: Optional[bool] = None, store: Any = None, run_id: str = "",
                 interval: float = 1.0, log_every: float = 10.0, window: float = 30.0):
        from pipeline import logs

        self.counter = counter
        self.terminal = logs.terminal()
        self.interactive = self.terminal.interactive if interactive is None else interactive
        self.interval = interval
        self.log_every = log_every
        self.window = window
        self.store = store
        self.timeline_rel = f"_runs/{run_id}/{TIMELINE_NAME}" if store is not None and run_id else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._t0 = time.time()
        self._history: collections.deque = collections.deque()  # (t, done, output tokens)
        self._base: Optional[tuple[float, int, int]] = None
        self._first: Optional[tuple[float, int, int]] = None  # the first sample seen (a resumed run starts past 0)
        self._timeline: list[str] = self._load_timeline()
        self._attempt = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._last_sample = 0.0
        self._last_flush = time.monotonic()
        self.last: Optional[Snapshot] = None

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "ProgressReporter":
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)

    def _poll(self) -> Optional[Snapshot]:
        import ray

        try:
            self.last = ray.get(self.counter.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - progress never breaks a run
            logger.debug("progress poll failed", exc_info=True)
        return self.last

    # -- figures ------------------------------------------------------------------------
    def rates(self, s: Snapshot) -> Rates:
        now = s.t
        if s.done == 0:
            self._base = (now, 0, 0)  # the last moment nothing had finished yet
        self._history.append((now, s.done, s.output_tokens))
        if self._first is None:
            self._first = (now, s.done, s.output_tokens)
        while len(self._history) > 2 and now - self._history[0][0] > self.window:
            self._history.popleft()
        if not s.done:
            return Rates()
        t0, d0, o0 = self._history[0]
        if self._base is not None and t0 < self._base[0]:
            # The window reaches back into start-up: measure from the first finishes only.
            t0, d0, o0 = self._base
        dt = now - t0
        if dt < 1.0 or s.done - d0 <= 0:
            return Rates()
        r = Rates(requests_per_s=(s.done - d0) / dt, tokens_per_s=(s.output_tokens - o0) / dt)
        planned = s.planned
        t1, d1, _ = self._base or self._first
        if planned is not None and s.done > d1 and now - t1 >= 1.0:
            r.eta_s = max(planned - s.done, 0) / ((s.done - d1) / (now - t1))
        return r

    @staticmethod
    def counts_text(s: Snapshot) -> str:
        parts = []
        for t in s.tasks:
            f = s.failed.get(t, 0)
            parts.append(f"{t} ok {s.ok.get(t, 0):,}" + (f" failed {f:,}" if f else " failed 0"))
        return ", ".join(parts)

    def phase_text(self, s: Snapshot) -> str:
        el = _fmt_duration(s.t - self._t0)
        if s.phase == "starting":
            return f"starting Ray and {s.actors} inference actor{'s' if s.actors > 1 else ''} ({el})"
        return f"loading model on {s.actors} actor{'s' if s.actors > 1 else ''}: {s.engines_ready} ready ({el})"

    def line(self, s: Snapshot, r: Rates) -> str:
        if s.phase != "running":
            return self.phase_text(s)
        planned = s.planned
        total = f"{'' if s.planned_exact else '~'}{planned:,}" if planned is not None else "?"
        pct = f" ({100 * s.done / planned:.0f}%)" if planned else ""
        speed = f"{r.tokens_per_s:,.0f} tok/s, {r.requests_per_s:,.1f} req/s" if r.tokens_per_s is not None else "measuring speed"
        eta = f", ETA {_fmt_duration(r.eta_s)}" if r.eta_s is not None else ""
        engines = f"; {s.engines_ready} of {s.actors} engines ready" if _engines_missing(s) else ""
        return (f"{s.done:,}/{total} requests{pct}, {speed}{eta}; {self.counts_text(s)}; "
                f"{s.rows_committed:,} rows committed{engines}")

    # -- timeline -----------------------------------------------------------------------
    def _load_timeline(self) -> list[str]:
        if self.timeline_rel is None:
            return []
        try:
            if self.store.exists(self.timeline_rel):  # an earlier attempt of this run: keep its samples
                return self.store.read_bytes(self.timeline_rel).decode().splitlines()
        except Exception:  # noqa: BLE001 - a timeline is a convenience
            logger.debug("could not read the earlier timeline", exc_info=True)
        return []

    def _sample(self, s: Snapshot, r: Rates, force: bool = False) -> None:
        if self.timeline_rel is None:
            return
        elapsed = s.t - self._t0
        # every 2 s at first, then sparser: a long run keeps a few hundred samples per doubling
        every = min(max(2.0, elapsed / 150), 60.0)
        if not force and s.t - self._last_sample < every:
            return
        self._last_sample = s.t
        rec = {
            "t": round(s.t, 3), "attempt": self._attempt, "elapsed": round(elapsed, 2), "phase": s.phase,
            "engines_ready": s.engines_ready, "rows_read": s.rows_read, "requests_planned": s.planned,
            "planned_exact": s.planned_exact, "requests_done": s.done, "ok": s.ok, "failed": s.failed,
            "prompt_tokens": s.prompt_tokens, "output_tokens": s.output_tokens,
            "tokens_per_s": None if r.tokens_per_s is None else round(r.tokens_per_s, 2),
            "requests_per_s": None if r.requests_per_s is None else round(r.requests_per_s, 3),
            "in_flight": s.in_flight, "waiting": s.waiting, "kv_cache_usage": s.kv_cache_usage,
            "rows_committed": s.rows_committed,
        }
        self._timeline.append(json.dumps(rec, separators=(",", ":")))
        if force or time.monotonic() - self._last_flush > 10:
            self._flush()

    def _flush(self) -> None:
        if self.timeline_rel is None:
            return
        try:
            self.store.write_bytes(self.timeline_rel, ("\n".join(self._timeline) + "\n").encode())
        except Exception:  # noqa: BLE001 - a timeline is a convenience
            logger.debug("could not write the timeline", exc_info=True)
        self._last_flush = time.monotonic()

    # -- the loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        view = _Bar(self) if self.interactive else None
        last_log = time.monotonic()
        last_phase = None
        try:
            while not self._stop.wait(self.interval):
                s = self._poll()
                if s is None:
                    continue
                r = self.rates(s)
                self._sample(s, r)
                if view is not None:
                    view.update(s, r)
                elif s.phase != last_phase or time.monotonic() - last_log >= self.log_every:
                    logger.info("%s", self.line(s, r))
                    last_log, last_phase = time.monotonic(), s.phase
            s = self._poll()
            if s is not None:
                r = self.rates(s)
                self._sample(s, r, force=True)
                if view is not None:
                    view.update(s, r)
                else:
                    logger.info("%s", self.line(s, r))
        finally:
            if view is not None:
                view.close()
            self._flush()


class _Bar:
    """The terminal view: rich's progress bar, its phase in the description, and a line of
    per-task counts under it."""

    def __init__(self, reporter: ProgressReporter):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.text import Text

        class _Progress(Progress):
            detail = Text("")

            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                if self.detail.plain:
                    yield self.detail

        self.reporter = reporter
        self.progress = _Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[speed]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=reporter.terminal.console,
            refresh_per_second=4,
            transient=False,
            # sys.stderr is the run's log file under the CLI (pipeline/logs.py): keep it so.
            redirect_stderr=False,
        )
        self.task = self.progress.add_task("starting", total=None, counts="", speed="", eta="")
        self.progress.start()
        self._Text = Text

    def update(self, s: Snapshot, r: Rates) -> None:
        p = self.progress
        if s.phase != "running":
            p.update(self.task, description=self.reporter.phase_text(s), total=None)
            return
        planned = s.planned
        total = f"{'' if s.planned_exact else '~'}{planned:,}" if planned is not None else "?"
        speed = f"{r.tokens_per_s:,.0f} tok/s" if r.tokens_per_s is not None else ""
        eta = f"ETA {_fmt_duration(r.eta_s)}" if r.eta_s is not None else ""
        p.update(self.task, description="requests", total=planned, completed=min(s.done, planned or s.done),
                 counts=f"{s.done:,}/{total}", speed=speed, eta=eta)
        engines = f"  ({s.engines_ready} of {s.actors} engines ready)" if _engines_missing(s) else ""
        p.detail = self._Text(f"  {self.reporter.counts_text(s)}; {s.rows_committed:,} rows committed{engines}")

    def close(self) -> None:
        self.progress.stop()
