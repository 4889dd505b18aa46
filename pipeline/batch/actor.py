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
from collections import defaultdict
from typing import Any, Optional

import pyarrow as pa

from pipeline.config import JobSpec
from pipeline.io.commit import ERROR_SCHEMA, ERRORS, RunCommitter, part_key
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
    ):
        created_at = time.time()
        from pipeline.engine.engine import Engine, reap_orphaned_engines

        self.spec = JobSpec.model_validate_json(spec_json)
        self.tasks = build_tasks(self.spec.tasks)
        self.model_name = model_name
        self.run_id = run_id
        self.committer = RunCommitter(Store(self.spec.output.path), run_id)
        self.progress = progress
        reap_orphaned_engines()  # a restarted actor: free what its killed predecessor held
        self.engine = Engine(model_path, self.spec.engine).start()
        self.instance = uuid.uuid4().hex
        if progress is not None:
            progress.engine_ready.remote(self.instance, self.engine.load_seconds, time.time(), created_at)
        self.ctx = ExecContext.for_engine(self.engine.tokenizer, self.spec.engine)
        self._slots: Optional[asyncio.Semaphore] = None  # made on Ray Data's event loop, at first call
        threading.Thread(target=self._watchdog, name="engine-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        """A hung engine is a dead engine: exit, so that Ray restarts the actor and retries the batch."""
        timeout = self.spec.engine.hang_timeout_s
        reported, last_report = 0, 0.0
        while True:
            time.sleep(min(1.0, timeout / 4))
            if self.engine.is_dead():
                self._die(RuntimeError("the engine-core process exited"))
            done = self.engine.finished_requests
            now = time.monotonic()
            if self.progress is not None and done > reported and now - last_report >= 2:
                self.progress.record.remote({"requests": done - reported})  # live, between commits
                reported, last_report = done, now
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
        batch's requests are already queued there. At most `engine.batches_in_flight`."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.spec.engine.batches_in_flight)
        async with self._slots:
            return await self._process(batch)

    async def _process(self, batch: pa.Table) -> pa.Table:
        t_call = time.perf_counter()
        timing = {"prepare_seconds": 0.0, "generate_seconds": 0.0}
        cols = batch.to_pydict()
        parts: dict[str, list[int]] = defaultdict(list)
        for i, unit in enumerate(cols["unit"]):
            parts[unit].append(i)

        todo, meta = [], []
        for unit, idx in parts.items():
            key = part_key(unit, min(cols["position"][i] for i in idx))
            bytes_read = sum(cols["bytes_read"][i] for i in idx)
            if self.committer.is_committed(key):  # a retried batch: this part is done
                meta.append(self._meta(key, unit, len(idx), True, {}, 0, 0, bytes_read))
            else:
                todo.append((key, unit, idx, bytes_read))

        rows = [i for _, _, idx, _ in todo for i in idx]
        results = await self._infer(cols, rows, timing)

        for key, unit, idx, bytes_read in todo:
            tables, counts, ptoks, otoks = self._part_tables(cols, idx, results)
            first, last = min(cols["position"][i] for i in idx), max(cols["position"][i] for i in idx)
            record = {
                "unit": unit,
                "source": cols["source"][idx[0]],
                "first_position": first,
                "last_position": last,
                "rows": len(idx),
                "unit_rows": cols["unit_rows"][idx[0]],
                "counts": counts,
                "prompt_tokens": ptoks,
                "output_tokens": otoks,
            }
            t0 = time.perf_counter()
            self.committer.commit_part(key, tables, record)
            meta.append(self._meta(key, unit, len(idx), False, counts, ptoks, otoks, bytes_read))
            meta[-1]["commit_seconds"] = time.perf_counter() - t0
        if self.progress is not None and todo:
            self.progress.engine_metrics.remote(self.instance, self.engine.metrics())
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
        if self.progress is not None:
            self.progress.record.remote({k: m[k] for k in ("rows", "ok", "errors", "prompt_tokens", "output_tokens", "bytes_read")})
        return m

    # -- inference ------------------------------------------------------------------
    async def _infer(self, cols: dict[str, list], rows: list[int], timing: dict[str, float]) -> dict[tuple[int, int], TaskResult]:
        """(row, task) -> TaskResult for every row and task the batch needs. Each (row, task)
        is one `execute` coroutine (pipeline.tasks.execute, shared with the Serve endpoint);
        all of them are in the engine together, so continuous batching always has work."""
        out: dict[tuple[int, int], TaskResult] = {}
        keys, coros = [], []
        only = cols.get("only_tasks")  # set by retry runs: the tasks this row still needs
        for i in rows:
            kind = cols["error_kind"][i]
            for t, task in enumerate(self.tasks):
                if only is not None and only[i] is not None and task.name not in only[i].split(","):
                    continue
                if kind:  # the reader already failed this row: its error stands for every task
                    out[(i, t)] = TaskResult.failure(task.name, kind, cols["error_message"][i])
                    continue
                keys.append((i, t))
                coros.append(execute(task, cols["text"][i], self.engine, self.ctx))
        t0 = time.perf_counter()
        results = await asyncio.gather(*coros, return_exceptions=True)
        timing["generate_seconds"] += time.perf_counter() - t0
        for key, r in zip(keys, results):
            if isinstance(r, BaseException):
                # Only a dead engine escapes execute(): fatal for this actor (Ray restarts it
                # and retries the batch; committed parts are skipped then).
                self._die(r)
            out[key] = r
            timing["prepare_seconds"] += r.timings.get("render", 0.0)
        return out

    # -- output ---------------------------------------------------------------------
    def _part_tables(self, cols, idx, results: dict[tuple[int, int], TaskResult]):
        counts: dict[str, dict[str, int]] = {}
        ptoks = otoks = 0
        tables: dict[str, pa.Table] = {}
        err_rows: list[dict[str, Any]] = []
        only = cols.get("only_tasks")
        for t, task in enumerate(self.tasks):
            ok_rows = []
            n_err = n_cut = 0
            expected = 0
            for i in idx:
                if only is not None and only[i] is not None and task.name not in only[i].split(","):
                    continue
                expected += 1
                r = results.get((i, t))
                if r is None:
                    continue
                base = {"row_id": cols["row_id"][i], "source": cols["source"][i], "position": cols["position"][i], "task": task.name}
                ptoks += r.prompt_tokens
                otoks += r.output_tokens
                if r.ok:
                    ok_rows.append({**base, "model": self.model_name, "run_id": self.run_id, **r.columns})
                    n_cut += r.output_truncated
                else:
                    err_rows.append({**base, "error_kind": r.error_kind.value, "error_message": r.error_message, "run_id": self.run_id})
                    n_err += 1
            if len(ok_rows) + n_err != expected:  # one row in, one row out: never drop or double
                raise RuntimeError(f"task {task.name}: {expected} rows in, {len(ok_rows) + n_err} out")
            counts[task.name] = {"ok": len(ok_rows), "error": n_err, "truncated": n_cut}
            tables[task.name] = pa.Table.from_pylist(ok_rows, schema=task.schema())
        tables[ERRORS] = pa.Table.from_pylist(err_rows, schema=ERROR_SCHEMA)
        return tables, counts, ptoks, otoks

    def shutdown(self) -> None:
        self.engine.shutdown()
