"""`pipeline show OUT --task sentiment -n 5`: a few results beside their input text.

Results carry their input's `source` and `position`; the ledger of the run that made them
records how the inputs were read (`input`), so the input rows are read again with the
same reader, stopping at the last position needed, and joined on `row_id`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Optional

from pipeline.errors import UsageError
from pipeline.io.commit import read_manifest
from pipeline.io.store import Store

# Besides the answer itself, the columns worth a glance, per task (the rest: `pipeline report`).
EXTRA = {"sentiment": ["label", "score"], "translation": ["target_lang"], "summarization": ["max_words"]}


def pick_rows(output: str, task: str, n: int, run_id: Optional[str] = None, seed: Optional[int] = None) -> list[dict[str, Any]]:
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    store = Store(output)
    manifest = read_manifest(store)
    if manifest is None:
        raise UsageError(f"{output} has no published output yet (no _manifest.json)")
    files = [store.path(f) for f in manifest.datasets.get(task, [])]
    if not files:
        raise UsageError(f"{output} has no {task} results; it has: {', '.join(sorted(manifest.datasets)) or 'none'}")
    ds = pads.dataset(files, filesystem=store.fs, format="parquet")
    cols = [c for c in ["row_id", "source", "position", "output_text", "output_truncated", "input_truncated",
                        "run_id"] + EXTRA.get(task, []) if c in ds.schema.names]
    table = ds.to_table(columns=cols, filter=(pc.field("run_id") == run_id) if run_id else None)
    if not table.num_rows:
        raise UsageError(f"no {task} results of run {run_id} in {output}")
    if seed is not None:
        idx = sorted(random.Random(seed).sample(range(table.num_rows), min(n, table.num_rows)))
        table = table.take(idx)
    else:
        table = table.sort_by([("source", "ascending"), ("position", "ascending")]).slice(0, n)
    return table.to_pylist()


def input_texts(output: str, rows: list[dict[str, Any]]) -> dict[str, str]:
    """row_id -> input text, read again from the inputs with the reader options the run used."""
    from pipeline.config import InputConfig
    from pipeline.io.readers import read_units
    from pipeline.io.sources import list_sources

    store = Store(output)
    wanted: dict[tuple[str, str], set[int]] = defaultdict(set)  # (run, source) -> positions
    for r in rows:
        wanted[(r["run_id"], r["source"])].add(r["position"])
    texts: dict[str, str] = {}
    for (run_id, uri), positions in wanted.items():
        entry = store.read_json(f"_runs/{run_id}.json") or {}
        # A ledger written before runs recorded their reader options: the defaults (a row
        # whose id then differs finds no text, and says so).
        cfg = InputConfig.model_validate({**entry.get("input", {}), "paths": [uri]})
        try:
            (src,) = list_sources(cfg)
        except Exception:  # noqa: BLE001 - the input moved or is gone: show results without text
            continue
        last = max(positions)
        for table in read_units(src, cfg, rows_per_unit=10_000):
            for rid, pos, text in zip(table["row_id"].to_pylist(), table["position"].to_pylist(), table["text"].to_pylist()):
                if pos in positions:
                    texts[rid] = text or ""
            if table.num_rows and table["position"][-1].as_py() >= last:
                break
    return texts


def show(output: str, task: str, n: int = 5, run_id: Optional[str] = None, seed: Optional[int] = None,
         width: Optional[int] = None, console: Any = None) -> list[dict[str, Any]]:
    from rich.table import Table
    from rich.text import Text

    if console is None:  # the command's output: stdout, like any listing
        from rich.console import Console

        console = Console()
    rows = pick_rows(output, task, n, run_id, seed)
    texts = input_texts(output, rows)
    width = width or max(40, min(400, int(console.width * 0.45)))
    t = Table(title=f"{task}: {len(rows)} result{'s' if len(rows) != 1 else ''} from {output}", title_justify="left",
              show_lines=True, expand=True)
    t.add_column("row", overflow="fold", ratio=1)
    t.add_column("input", ratio=4)
    t.add_column(task, ratio=3)
    for r in rows:
        text = texts.get(r["row_id"])
        shown = "(input not readable now)" if text is None else text if len(text) <= width else text[: width - 3] + "..."
        answer = r.get("output_text") or ""
        if task == "sentiment" and r.get("label") is not None:
            score = r.get("score")
            answer = r["label"] + (f"  (p={score:.2f})" if score is not None else "")
        notes = [f"{k}: {r[k]}" for k in EXTRA.get(task, []) if k not in ("label", "score") and r.get(k) is not None]
        if r.get("output_truncated"):
            notes.append("answer cut at max_tokens or empty")
        if r.get("input_truncated"):
            notes.append("input truncated to fit")
        cell = Text(answer)  # Text, not markup: model output and inputs may hold [brackets]
        if notes:
            cell.append("\n" + "; ".join(notes), style="dim")
        t.add_row(Text(r["row_id"]), Text(shown), cell)
    console.print(t)
    return rows
