"""From a batch of rows and their task results to committed parts: the actor's bookkeeping,
apart from the engine so that a fake engine can drive it in tests.

    todo, skipped = split_batch(committer, cols)     # rows grouped into parts, minus committed ones
    needed, failed = requests(cols, rows, tasks)     # (row, task) pairs to run; reader errors
    record, tables = build_part(piece, cols, tasks, results, model_name, run_id)
    committer.commit_part(record, tables)

A part is the rows of one commit unit that one batch held (split further when a retry
batch mixes re-read rows with rows that need only some tasks). It records its positions
as ranges, so whatever the batch boundaries, coverage is counted row by row.

A piece may be committed in several *waves* (the actor commits whole texts as soon as they
are done and the rows of split documents when those are): wave 0 is keyed
`part_key(unit, first position of the piece)`, wave w > 0 that key + `.w`. The waves are
committed one after the other, so a retried batch finds them by counting up until a key
is missing, whichever rows each held.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa

from pipeline.errors import ErrorKind
from pipeline.io.commit import ERROR_SCHEMA, ERRORS, RunCommitter, part_key
from pipeline.io.ranges import RangeSet
from pipeline.io.records import COVERS_TO_END, PartRecord, TaskCount
from pipeline.tasks.execute import TaskResult

_READ_ERROR = ErrorKind.READ_ERROR.value


@dataclass
class Piece:
    key: str  # wave 0's key (see wave_key)
    unit: str
    idx: list[int]  # row indices into the batch
    wave: int = 0  # the first wave this attempt commits (earlier ones: an earlier attempt's)

    def wave_key(self, k: int) -> str:
        """The key of this piece's k-th wave committed by this attempt."""
        return wave_key(self.key, self.wave + k)


def wave_key(key: str, wave: int) -> str:
    return key if wave == 0 else f"{key}.{wave}"


def split_batch(committer: RunCommitter, cols: dict[str, list]) -> tuple[list[Piece], list[Piece]]:
    """(to compute, already committed). A retried batch finds its parts committed under the
    same keys (every wave of them); a batch whose rows an earlier attempt committed with
    other boundaries (keys that differ) is caught at publish, where overlapping parts are
    trimmed."""
    groups: dict[tuple[str, bool], list[int]] = {}
    only = cols.get("only_tasks")
    for i, unit in enumerate(cols["unit"]):
        groups.setdefault((unit, only is not None and only[i] is not None), []).append(i)
    positions = cols["position"]
    todo, skipped = [], []
    for (unit, _), idx in groups.items():
        pending = idx
        waves: dict[str, int] = {}  # key probed -> its waves found
        while pending:
            key = part_key(unit, min(positions[i] for i in pending))
            if key in waves:  # an earlier attempt committed some of its waves, not this row's
                todo.append(Piece(key, unit, pending, waves[key]))
                break
            n = 0
            while (rec := committer.read_part(wave_key(key, n))) is not None:
                held = rec.position_set()
                done = [i for i in pending if positions[i] in held]
                if done:
                    skipped.append(Piece(rec.key, unit, done))
                pending = [i for i in pending if positions[i] not in held]
                n += 1
            if n == 0:
                todo.append(Piece(key, unit, pending))
                break
            waves[key] = n
    return todo, skipped


def requests(cols: dict[str, list], rows: list[int], tasks: list) -> tuple[list[tuple[int, int]], dict[tuple[int, int], TaskResult]]:
    """(row, task) pairs to execute, and the results of rows the reader already failed
    (their error stands for every task)."""
    needed, failed = [], {}
    only = cols.get("only_tasks")
    for i in rows:
        kind = cols["error_kind"][i]
        for t, task in enumerate(tasks):
            if only is not None and only[i] is not None and task.name not in only[i].split(","):
                continue
            if kind:
                failed[(i, t)] = TaskResult.failure(task.name, kind, cols["error_message"][i])
            else:
                needed.append((i, t))
    return needed, failed


def build_part(piece: Piece, cols: dict[str, list], tasks: list, results: dict[tuple[int, int], TaskResult],
               model_name: str, run_id: str) -> tuple[PartRecord, dict[str, pa.Table]]:
    """The part's tables (one per task, and errors) and its commit record (files not yet set).
    One row in, one result or error row out per task: checked here, never silently dropped."""
    idx = piece.idx
    counts: dict[str, TaskCount] = {}
    ptoks = otoks = 0
    tables: dict[str, pa.Table] = {}
    err_rows: list[dict[str, Any]] = []
    only = cols.get("only_tasks")
    covers = cols.get("covers_to")
    for t, task in enumerate(tasks):
        ok_rows = []
        n_err = n_cut = expected = 0
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
                ok_rows.append({**base, "model": model_name, "run_id": run_id, **r.columns})
                n_cut += r.output_truncated
            else:
                kind = r.error_kind.value
                to = None
                if kind == _READ_ERROR:
                    to = covers[i] if covers is not None and covers[i] is not None else COVERS_TO_END
                err_rows.append({**base, "error_kind": kind, "error_message": r.error_message, "run_id": run_id, "covers_to": to})
                n_err += 1
        if len(ok_rows) + n_err != expected:
            raise RuntimeError(f"task {task.name}: {expected} rows in, {len(ok_rows) + n_err} out")
        counts[task.name] = TaskCount(ok=len(ok_rows), error=n_err, truncated=n_cut)
        tables[task.name] = pa.Table.from_pylist(ok_rows, schema=task.schema())
    tables[ERRORS] = pa.Table.from_pylist(err_rows, schema=ERROR_SCHEMA)

    positions = [cols["position"][i] for i in idx]
    file_rows_col = cols.get("file_rows")
    file_rows: Optional[int] = None
    if file_rows_col is not None:
        known = [file_rows_col[i] for i in idx if file_rows_col[i] is not None]
        file_rows = max(known) if known else None
    read_errors = []
    for i in idx:
        if cols["error_kind"][i] == _READ_ERROR:
            to = covers[i] if covers is not None and covers[i] is not None else COVERS_TO_END
            read_errors.append((cols["position"][i], int(to)))
    part_tasks = None
    if only is not None and only[idx[0]] is not None:
        part_tasks = sorted({t for i in idx for t in (only[i] or "").split(",") if t})
    record = PartRecord(
        key=piece.key, run_id=run_id, source=cols["source"][idx[0]], unit=piece.unit,
        unit_rows=cols["unit_rows"][idx[0]], positions=[tuple(r) for r in RangeSet.of(positions).ranges()],
        rows=len(idx), file_rows=file_rows, read_errors=sorted(read_errors), tasks=part_tasks,
        counts=counts, prompt_tokens=ptoks, output_tokens=otoks,
    )
    return record, tables
