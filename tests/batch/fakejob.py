"""The `pipeline` command with rows computed in-process by a fake engine instead of Ray + vLLM.

    python tests/batch/fakejob.py run job.yaml [--wait] ...   (any `pipeline` verb and flags)

Why a fake: the fault harness kills runs at every named step of commit and publish, for
many seeds; starting Ray and a vLLM engine for each would take minutes. Everything but the
computing of rows is the real code: the CLI, planning, the output lease, the read stage
(`read_sources`, real readers), the actor's part bookkeeping (`pipeline.batch.parts`),
commit records, coverage, duplicate ids, publish, housekeeping, retry-errors. The
real-engine path is proven by tests/batch/test_failures.py, test_incremental.py and
test_exactly_once_e2e.py.

Environment:
    PIPELINE_FAKE_SEED    batches in flight finish in an order drawn from this seed (default 0)
    PIPELINE_FAKE_DELAY   seconds each batch takes (keeps a run alive while a test acts)
    PIPELINE_FAKE_FAIL    rows whose text holds this string fail with generation_error
    PIPELINE_FAKE_READ_AHEAD  1: read every file before computing (as Ray's read stage runs ahead)
    PIPELINE_FAKE_WAVES   1: commit each piece in two waves of rows drawn at random (as the
                          actor commits whole texts before a long document of their batch)
    PIPELINE_FAULT        kill points (pipeline.io.commit.fault_point)
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from typing import Any, Optional

import pyarrow as pa


def _fake_result(task, text: str):
    from pipeline.engine.outputs import Completion, Generation
    from pipeline.errors import ErrorKind
    from pipeline.tasks.execute import TaskResult, finish

    fail = os.environ.get("PIPELINE_FAKE_FAIL")
    if fail and fail in text:
        return TaskResult.failure(task.name, ErrorKind.GENERATION_ERROR, "fake engine: failed on purpose")
    labels = getattr(task.cfg, "labels", None)
    answer = labels[len(text) % len(labels)] if labels else f"{task.name} of: {text[:24]}"
    n = len(answer.split())
    return finish(task, Generation(Completion(answer, tuple(range(n)), "stop", -0.1), len(text.split()) + 8), False)


def execute_local(plan, parts, interactive: Optional[bool], select: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """execute_plan's contract, in this process: read stage -> batches -> parts committed."""
    from pipeline.batch.execution import COMPUTED, read_items, read_kwargs, read_sources
    from pipeline.batch.parts import Piece, build_part, requests, split_batch
    from pipeline.tasks import build_tasks

    spec = plan.spec
    tasks = build_tasks(spec.tasks)
    committer = plan.committer
    rng = random.Random(int(os.environ.get("PIPELINE_FAKE_SEED", "0")))
    delay = float(os.environ.get("PIPELINE_FAKE_DELAY", "0"))
    waves = os.environ.get("PIPELINE_FAKE_WAVES") == "1"
    wave_rng = random.Random(int(os.environ.get("PIPELINE_FAKE_SEED", "0")) + 1)  # apart: batch order unchanged
    computed: Counter = Counter({k: 0 for k in COMPUTED})
    t0 = time.perf_counter()

    def tables():
        kw = read_kwargs(plan)
        for item in read_items(plan, parts, select):
            yield from read_sources(pa.Table.from_pylist([item]), **kw)

    def batches():  # Ray Data cuts the stream into batch_rows rows, across units and files
        pending: list[pa.Table] = []
        n = 0
        stream = list(tables()) if os.environ.get("PIPELINE_FAKE_READ_AHEAD") == "1" else tables()
        for t in stream:
            pending.append(t)
            n += t.num_rows
            while n >= spec.engine.batch_rows:
                whole = pa.concat_tables(pending)
                yield whole.slice(0, spec.engine.batch_rows)
                rest = whole.slice(spec.engine.batch_rows)
                pending, n = ([rest] if rest.num_rows else []), rest.num_rows
        if n:
            yield pa.concat_tables(pending)

    def process(batch: pa.Table) -> None:
        if delay:
            time.sleep(delay)
        cols = batch.to_pydict()
        todo, _ = split_batch(committer, cols)
        rows = [i for piece in todo for i in piece.idx]
        needed, results = requests(cols, rows, tasks)
        for i, t in needed:
            results[(i, t)] = _fake_result(tasks[t], cols["text"][i])
        for piece in todo:
            groups = [piece.idx]
            if waves and len(piece.idx) > 1:
                first = set(wave_rng.sample(piece.idx, wave_rng.randrange(1, len(piece.idx))))
                groups = [[i for i in piece.idx if i in first], [i for i in piece.idx if i not in first]]
            for k, idx in enumerate(groups):
                wave = Piece(piece.wave_key(k), piece.unit, idx)
                record, part_tables = build_part(wave, cols, tasks, results, "fake-model", plan.run_id)
                c0 = time.perf_counter()
                committer.commit_part(record, part_tables)
                computed["commit_seconds"] += time.perf_counter() - c0
                computed["rows"] += record.rows
                computed["output_tokens"] += record.output_tokens
                computed["prompt_tokens"] += record.prompt_tokens

    # Batches in flight finish in any order: keep a window of them, finish one at random.
    window: list[pa.Table] = []
    for b in batches():
        window.append(b)
        if len(window) > spec.engine.batches_in_flight * spec.resources.actors:
            process(window.pop(rng.randrange(len(window))))
    while window:
        process(window.pop(rng.randrange(len(window))))
    computed["seconds"] = time.perf_counter() - t0
    return dict(computed)


def main(argv: list[str]) -> int:
    import pipeline.batch.retry as retry
    import pipeline.batch.runner as runner
    from pipeline.cli import main as cli_main

    runner.execute_plan = execute_local
    retry.execute_plan = execute_local
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
