"""The runner's read step (a plain function; Ray Data calls it per file): resume state in,
uncommitted rows out, and a read error never hidden by what is skipped or dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa

from pipeline.batch.execution import read_sources
from pipeline.config import InputConfig
from pipeline.io.readers import unit_id
from pipeline.io.sources import list_sources


def _read(src, cfg: InputConfig, rpu: int, done: dict) -> list[dict]:
    batch = pa.table({"source": [json.dumps(dataclasses.asdict(src))], "done": [json.dumps(done)]})
    return [r for t in read_sources(batch, cfg.model_dump_json(), rpu) for r in t.to_pylist()]


def test_resume_after_the_file_became_unreadable(tmp_path: Path) -> None:
    """Unit 0 and the start of unit 1 were committed; on the rerun the file is gone. The rows
    from 15 on are neither committed nor readable: one read_error row must stand for them."""
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(30)))
    cfg = InputConfig(paths=[str(path)])
    (src,) = list_sources(cfg)
    done = {unit_id(src, 0, 10): {"full": True, "ranges": [[0, 9]]}, unit_id(src, 10, 10): {"full": False, "ranges": [[10, 14]]}}
    assert [r["position"] for r in _read(src, cfg, 10, done)] == list(range(15, 30))  # readable: the rest
    path.unlink()
    (row,) = _read(src, cfg, 10, done)
    assert (row["position"], row["error_kind"], row["covers_to"]) == (15, "read_error", -1)
    assert row["error_message"].startswith("rows from position 15 to the end of the file could not be read")
