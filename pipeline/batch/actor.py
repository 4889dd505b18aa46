"""The inference actor: one vLLM engine, loaded once, mapping batches of rows to committed parts.

Ray Data calls `InferenceActor(...)` once per actor and then `actor(batch)` per batch.
A batch may hold several commit units and pieces of units; each piece (a *part*) is
written and committed on its own, so a part is the unit of exactly-once:
one row in, one result or error row out per task, checked before the commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections import Counter
from typing import Any, Callable, Optional

import pyarrow as pa

from pipeline.config import JobSpec
from pipeline.batch.parts import Piece, build_part, requests, split_batch
from pipeline.io.commit import RunCommitter
from pipeline.io.store import Store
from pipeline.tasks import build_tasks
from pipeline.tasks.execute import ExecContext, TaskResult, execute

logger = logging.getLogger(__name__)

# What each batch returns to the driver: one row per part (small; the results are in files).
META_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("unit", pa.string()),
        ("rows", pa.int64()),
        ("skipped", pa.bool_()),
        ("ok", pa.int64()),
        ("errors", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("bytes_read", pa.int64()),
        ("counts", pa.string()),  # JSON {task: {"ok": n, "error": n}}
        ("commit_seconds", pa.float64()),  # time spent writing and committing this part
        # Where the batch's time went (on the batch's first part only, 0 on the others):
        ("prepare_seconds", pa.float64()),  # prompts rendered (chat template, tokenizer)
        ("generate_seconds", pa.float64()),  # waiting on the engine
        ("batch_seconds", pa.float64()),  # the whole call
    ]
)


class InferenceActor:
    def __init__(
        self,
        spec_json: str,
        model_path: str,
        model_name: str,
        run_id: str,
        progress: Optional[Any] = None,
        engines_per_node: Optional[int] = None,
        worker_logs: bool = False,
    ):
        """`engines_per_node`: CPU engines sharing each node's cores (None: the engine has
        its node to itself, or runs on a GPU)."""
        created_at = time.time()
        if worker_logs:  # the CLI's quiet terminal: our lines marked, so the driver shows them
            from pipeline.logs import setup_worker

            setup_worker()
        from pipeline.batch.progress import Tally
        from pipeline.engine.engine import Engine, claim_cpu_slot, reap_orphaned_engines

        self.spec = JobSpec.model_validate_json(spec_json)
        self.tasks = build_tasks(self.spec.tasks)
        self.model_name = model_name
        self.run_id = run_id
        self.committer = RunCommitter(Store(self.spec.output.path), run_id)
        self.progress = progress
        self.instance = uuid.uuid4().hex
        self.tally = Tally()  # requests finished since the watchdog's last report
        self._reported: list = []  # progress records of this batch's commits, awaited before it returns
        self._closing = False
        if progress is not None:
            progress.engine_loading.remote(self.instance)
        reap_orphaned_engines()  # a restarted actor: free what its killed predecessor held
        # Several CPU engines on a node: this actor's share of its cores (held while it lives).
        self._slot = claim_cpu_slot(self.spec.engine, engines_per_node) if engines_per_node and engines_per_node > 1 else None
        self.engine = Engine(model_path, self.spec.engine, slot=self._slot.slot if self._slot else None).start()
        if progress is not None:
            progress.engine_ready.remote(self.instance, self.engine.load_seconds, time.time(), created_at, self.engine.describe())
        self.ctx = ExecContext.for_engine(self.engine.tokenizer, self.spec.engine, self.engine.max_model_len)
        self._slots: Optional[asyncio.Semaphore] = None  # made on Ray Data's event loop, at first call
        # Held weakly by the watchdog thread: dropping the actor must free it (__del__).
        threading.Thread(target=InferenceActor._watchdog, args=(weakref.ref(self),), name="engine-watchdog",
                         daemon=True).start()

    @staticmethod
    def _watchdog(ref: "weakref.ref[InferenceActor]") -> None:
        """A hung engine is a dead engine: exit, so that Ray restarts the actor and retries the
        batch. Also reports finished requests and the engine's gauges to the progress actor
        every second, so that progress moves between commits."""
        while True:
            me = ref()
            if me is None or me._closing:
                return
            timeout = me.spec.engine.hang_timeout_s
            del me
            time.sleep(min(1.0, timeout / 4))
            me = ref()
            if me is None or me._closing:
                return
            me._watch_once(timeout)
            del me

    def _watch_once(self, timeout: float) -> None:
        if self.engine.is_dead():
            self._die(RuntimeError("the engine-core process exited"))
        if self.progress is not None:
            delta = self.tally.take()
            gauges = {"in_flight": float(self.engine.in_flight), **self.engine.metrics()}
            import ray

            try:
                stop = ray.get(self.progress.finished.remote(self.instance, delta, gauges), timeout=5)
            except Exception:  # noqa: BLE001 - progress never breaks a run
                stop = False
            if stop:  # the run is over (every row committed): stop the engine while we may
                self.shutdown()
                return
        stalled = self.engine.stalled_for()
        if stalled > timeout:
            logger.error("engine made no progress for %.0fs (hang_timeout_s=%s): restarting the actor", stalled, timeout)
            os._exit(70)

    @staticmethod
    def _die(exc: BaseException) -> None:
        logger.error("vLLM engine died (%s: %s): restarting the actor; its batch will be retried", type(exc).__name__, exc)
        os._exit(71)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        """Async so that Ray Data runs several batches on this actor at once (map_batches'
        max_concurrency): while one batch's last rows finish in the engine, the next
        batch's requests are already queued there. At most `engine.batches_in_flight`
        batches with whole texts still running; a batch left with only the parts of split
        documents gives its slot to the next one (those parts queue behind whole texts)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.spec.engine.batches_in_flight)
        await self._slots.acquire()
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                self._slots.release()

        try:
            return await self._process(batch, release)
        finally:
            release()

    async def _process(self, batch: pa.Table, release=lambda: None) -> pa.Table:
        t_call = time.perf_counter()
        timing = {"prepare_seconds": 0.0, "generate_seconds": 0.0}
        cols = batch.to_pydict()
        todo, skipped = split_batch(self.committer, cols)
        meta = []
        for piece in skipped:  # a retried batch: an earlier attempt committed these rows
            bytes_read = sum(cols["bytes_read"][i] for i in piece.idx)
            meta.append(self._meta(piece.key, piece.unit, len(piece.idx), True, {}, 0, 0, bytes_read))

        waves = {id(piece): 0 for piece in todo}
        left = {id(piece): list(piece.idx) for piece in todo}

        def commit_ready(results: dict[tuple[int, int], TaskResult], running: Counter, split: set[int]) -> None:
            """Commit, per piece, the rows whose every task is done, once the piece's rows
            still running are all split documents: whole texts are committed without
            waiting for a long document of their batch, and it on its own when done."""
            for piece in todo:
                rest = left[id(piece)]
                ready = [i for i in rest if not running[i]]
                if not ready or any(running[i] and i not in split for i in rest):
                    continue
                left[id(piece)] = [i for i in rest if running[i]]
                wave = Piece(piece.wave_key(waves[id(piece)]), piece.unit, ready)
                waves[id(piece)] += 1
                record, tables = build_part(wave, cols, self.tasks, results, self.model_name, self.run_id)
                t0 = time.perf_counter()
                self.committer.commit_part(record, tables)
                counts = {t: c.model_dump() for t, c in record.counts.items()}
                bytes_read = sum(cols["bytes_read"][i] for i in ready)
                meta.append(self._meta(wave.key, wave.unit, record.rows, False, counts, record.prompt_tokens,
                                       record.output_tokens, bytes_read))
                meta[-1]["commit_seconds"] = time.perf_counter() - t0

        rows = [i for piece in todo for i in piece.idx]
        await self._infer(cols, rows, timing, commit_ready, release)
        timing["generate_seconds"] -= sum(m["commit_seconds"] for m in meta)  # commits ran while waiting
        if any(left.values()):  # cannot happen: every row's tasks finished
            raise RuntimeError(f"rows left uncommitted: {sum(map(len, left.values()))}")
        if self.progress is not None:
            if todo:
                self.progress.engine_metrics.remote(self.instance, self.engine.metrics())
            # What this batch finished, counted before the driver sees the batch, so that
            # progress never lags behind the commits (the watchdog reports in between).
            refs, self._reported = [*self._reported, self.progress.finished.remote(self.instance, self.tally.take(), None)], []
            try:
                await asyncio.wait_for(asyncio.gather(*refs), timeout=10)
                if todo and await self.progress.all_committed.remote():
                    await self._end_of_run()
            except Exception:  # noqa: BLE001 - progress never holds up or breaks a batch
                logger.debug("progress report not confirmed", exc_info=True)
        if meta:
            meta[0].update(timing, batch_seconds=time.perf_counter() - t_call)
        return pa.Table.from_pylist(meta, schema=META_SCHEMA)

    def _meta(self, key, unit, rows, skipped, counts, ptoks, otoks, bytes_read) -> dict[str, Any]:
        ok = sum(c["ok"] for c in counts.values())
        err = sum(c["error"] for c in counts.values())
        m = dict(
            key=key, unit=unit, rows=rows, skipped=skipped, ok=ok, errors=err,
            prompt_tokens=ptoks, output_tokens=otoks, bytes_read=bytes_read,
            counts=json.dumps(counts), commit_seconds=0.0,
            prepare_seconds=0.0, generate_seconds=0.0, batch_seconds=0.0,
        )
        if self.progress is not None and not skipped:  # a part committed by an earlier attempt counted then
            self._reported.append(self.progress.record.remote(
                {k: m[k] for k in ("rows", "ok", "errors", "prompt_tokens", "output_tokens", "bytes_read")}))
        return m

    # -- inference ------------------------------------------------------------------
    async def _infer(self, cols: dict[str, list], rows: list[int], timing: dict[str, float],
                     on_done: Callable[[dict, Counter, set[int]], None], release: Callable[[], None]) -> dict[tuple[int, int], TaskResult]:
        """(row, task) -> TaskResult for every row and task the batch needs. Each (row, task)
        is one `execute` coroutine (pipeline.tasks.execute, shared with the Serve endpoint);
        all of them are in the engine together, so continuous batching always has work.
        `on_done(results, running, split)` is called as requests finish once the rows still
        running are all split documents (running: a row's requests not finished; split:
        rows with a text split into parts), and `release` when that first happens."""
        keys, out = requests(cols, rows, self.tasks)
        for _, t in out:  # the reader already failed these rows: finished, for live progress
            self.tally.add(self.tasks[t].name, ok=False)
        running = Counter(i for i, _ in keys)
        split: set[int] = set()
        # Rows with a whole text still running: while there are any, nothing can be
        # committed early nor the slot given back. Kept as a count, so that each finished
        # request costs O(1) (a batch holds hundreds of rows x tasks).
        blocking = len(running)

        def on_split(i: int) -> None:
            nonlocal blocking
            if i not in split:
                split.add(i)
                blocking -= 1
                if not blocking:
                    release()

        futs = {
            asyncio.ensure_future(self._tallied(execute(self.tasks[t], cols["text"][i], self.engine, self.ctx,
                                                        on_split=lambda i=i: on_split(i)))): (i, t)
            for i, t in keys
        }
        finished: asyncio.Queue = asyncio.Queue()
        for f in futs:
            f.add_done_callback(finished.put_nowait)
        t0 = time.perf_counter()
        if not blocking:
            on_done(out, running, split)  # rows the reader failed: nothing to wait for
        try:
            for _ in range(len(futs)):
                f = await finished.get()
                if f.cancelled() or f.exception() is not None:
                    # Only a dead engine escapes execute(): fatal for this actor (Ray restarts
                    # it and retries the batch; committed parts are skipped then).
                    self._die(f.exception() if not f.cancelled() else asyncio.CancelledError())
                i, _ = futs[f]
                r = out[futs[f]] = f.result()
                timing["prepare_seconds"] += r.timings.get("render", 0.0)
                running[i] -= 1
                if not running[i] and i not in split:
                    blocking -= 1
                    if not blocking:
                        release()
                if not blocking:
                    on_done(out, running, split)
        finally:  # a failed commit fails the batch: its requests still in the engine go too
            for f in futs:
                if not f.done():
                    f.cancel()
        timing["generate_seconds"] += time.perf_counter() - t0
        return out

    async def _end_of_run(self, timeout: float = 10.0) -> None:
        """This batch committed the run's last rows. Once it returns, Ray Data ends the actor
        pool and Ray terminates the actors' child processes, engine cores included, under
        their live clients (which then print EngineDeadError tracebacks). So every engine
        stops first: this one now, the others when their watchdog hears of it (within a
        second); this batch returns when they have, or after `timeout`."""
        self.progress.request_stop.remote()
        await asyncio.get_running_loop().run_in_executor(None, self.shutdown)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and await self.progress.engines_running.remote() > 0:
            await asyncio.sleep(0.2)

    async def _tallied(self, coro) -> TaskResult:
        """Count a request when it finishes, for live progress (the watchdog reports it)."""
        r = await coro
        self.tally.add(r.task, r.ok, r.prompt_tokens, r.output_tokens, r.output_truncated)
        return r

    def shutdown(self) -> None:
        """Stop the engine cleanly (its output handler and engine-core process), so that the
        end of a run prints no EngineDeadError from a core killed under a live client."""
        if self._closing:
            return
        self._closing = True  # first: the watchdog must not take the engine's exit for a death
        self.engine.shutdown()
        if self.progress is not None:
            import ray

            try:  # waited for: the process may be about to exit
                ray.get(self.progress.engine_gone.remote(self.instance), timeout=2)
            except Exception:  # noqa: BLE001 - the driver then waits a little longer, no more
                pass

    def __del__(self) -> None:
        # Ray Data's cleanup protocol for a callable class: on a graceful end of the actor
        # pool it drops the instance (`__ray_shutdown__`), which runs this.
        if getattr(self, "engine", None) is not None:
            self.shutdown()
