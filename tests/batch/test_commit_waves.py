"""A batch's rows are committed in waves: whole texts when they are done, the rows of split
(long) documents on their own when those are, and a batch left with only a long document's
parts lets the next batch into the engine. A retried batch skips exactly the waves an
earlier attempt committed.

The first test drives the real actor (real vLLM on the tiny model, in this process, no Ray:
Ray only calls `actor(batch)`); the others need no engine.
"""

import asyncio
import json

import pyarrow as pa
import pytest

from pipeline.batch.parts import Piece, split_batch, wave_key
from pipeline.io.commit import RunCommitter, part_key
from pipeline.io.records import PartRecord
from pipeline.io.store import Store

MAX_LEN = 512


def _records(out) -> list[PartRecord]:
    return [PartRecord.model_validate_json(p.read_text()) for p in out.glob("_staging/*/_commits/*.json")]


def _batch(path, cfg, rows_per_unit):
    from pipeline.io.readers import read_units
    from pipeline.io.sources import list_sources

    (src,) = list_sources(cfg.model_copy(update={"paths": [str(path)]}))
    return pa.concat_tables(list(read_units(src, cfg, rows_per_unit)))


@pytest.mark.engine
def test_short_rows_commit_before_a_long_document_of_their_batch(tmp_path, tiny_model, tiny_tokenizer):
    from pipeline.batch.actor import InferenceActor
    from pipeline.config import JobSpec

    paras = [" ".join(f"Section {i}, line {j}: the council met and the vote passed." for j in range(6)) for i in range(40)]
    long_text = "\n\n".join(paras)
    assert len(tiny_tokenizer.encode(long_text)) > 8 * MAX_LEN
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with first.open("w") as f:  # the long document first: the lowest position of its unit
        f.write(json.dumps({"id": "long-0", "text": long_text}) + "\n")
        for k in range(20):
            f.write(json.dumps({"id": f"a-{k}", "text": f"Row {k}: the film was fine."}) + "\n")
    with second.open("w") as f:
        for k in range(20):
            f.write(json.dumps({"id": f"b-{k}", "text": f"Row {k}: the play was long."}) + "\n")
    out = tmp_path / "out"
    spec = JobSpec.model_validate({
        "input": {"paths": [str(first)], "id_field": "id"},
        "output": {"path": str(out), "rows_per_unit": 1000},
        "tasks": {"translation": {"target_lang": "French", "sampling": {"max_tokens": 48, "min_tokens": 48}}},
        "model": {"path": str(tiny_model)},
        # One batch in the engine at a time, few sequences: the long document's parts take
        # many engine steps, and the second batch gets in only if the first gives way.
        # 48 tokens: a part holds up to 32 source tokens, so the short rows (11-13) are whole.
        "engine": {"max_model_len": MAX_LEN, "max_num_seqs": 8, "kv_cache_gib": 0.25, "batches_in_flight": 1},
    })
    a, b = _batch(first, spec.input, 1000), _batch(second, spec.input, 1000)
    actor = InferenceActor(spec.model_dump_json(), str(tiny_model), "tiny-llama", "run1")
    try:
        async def both():
            return await asyncio.gather(actor(a), actor(b))

        meta_a, meta_b = asyncio.run(both())
        again = asyncio.run(actor(a))  # a retried batch: every wave already committed
    finally:
        actor.shutdown()

    recs = _records(out)
    long_pos = 0
    (long_part,) = [r for r in recs if long_pos in r.position_set() and r.source == str(first)]
    shorts = [r for r in recs if r is not long_part]
    assert long_part.rows == 1, "the long document is committed on its own"
    assert sum(r.rows for r in shorts) == 40
    # The short rows of its own batch, and the whole next batch, were committed before it.
    times = sorted((r.committed_at - long_part.committed_at, r.source[-7:], r.rows) for r in shorts)
    assert all(r.committed_at < long_part.committed_at for r in shorts), times
    assert meta_a["rows"].to_pylist() == [20, 1] and meta_b["rows"].to_pylist() == [20]
    assert long_part.key == wave_key(part_key(long_part.unit, 0), 1)
    assert again["skipped"].to_pylist() == [True, True] and sum(again["rows"].to_pylist()) == 21


# -- retries, without an engine ---------------------------------------------------------------
def _commit(committer: RunCommitter, key: str, unit: str, positions: list[int]) -> None:
    committer.commit_part(
        PartRecord(key=key, run_id="r", source="s", unit=unit, unit_rows=6, rows=len(positions),
                   positions=[(p, p) for p in positions]), {})


def _cols(unit: str, positions: list[int]) -> dict[str, list]:
    return {"unit": [unit] * len(positions), "position": positions}


def _plain(pieces: list[Piece], cols) -> list[tuple[str, int, list[int]]]:
    return sorted((p.key, p.wave, sorted(cols["position"][i] for i in p.idx)) for p in pieces)


def test_a_retry_skips_exactly_the_committed_waves(tmp_path):
    c = RunCommitter(Store(str(tmp_path)), "r")
    cols = _cols("u", [0, 1, 2, 3, 4, 5])
    base = part_key("u", 0)
    todo, skipped = split_batch(c, cols)  # nothing committed: one piece, wave 0
    assert _plain(todo, cols) == [(base, 0, [0, 1, 2, 3, 4, 5])] and skipped == []

    _commit(c, base, "u", [1, 2, 4])  # the short rows, then the attempt died
    todo, skipped = split_batch(c, cols)
    assert _plain(skipped, cols) == [(base, 0, [1, 2, 4])]
    # The rest continues the waves (the long document at position 0 was the key's first row).
    assert _plain(todo, cols) == [(base, 1, [0, 3, 5])]
    assert todo[0].wave_key(0) == wave_key(base, 1) and todo[0].wave_key(1) == wave_key(base, 2)

    _commit(c, wave_key(base, 1), "u", [3])  # one long document done, then died again
    todo, skipped = split_batch(c, cols)
    assert _plain(skipped, cols) == [(base, 0, [1, 2, 4]), (wave_key(base, 1), 0, [3])]
    assert _plain(todo, cols) == [(base, 2, [0, 5])]

    _commit(c, wave_key(base, 2), "u", [0, 5])
    todo, skipped = split_batch(c, cols)
    assert todo == [] and sum(len(p.idx) for p in skipped) == 6


def test_rows_left_after_an_earlier_boundary_get_their_own_key(tmp_path):
    """An earlier batch held rows 0-2 of the unit (and committed them in waves); this one
    holds 0-5 (resumed with other boundaries): rows 3-5 are probed under their own key."""
    c = RunCommitter(Store(str(tmp_path)), "r")
    base = part_key("u", 0)
    _commit(c, base, "u", [1, 2])
    _commit(c, wave_key(base, 1), "u", [0])
    cols = _cols("u", [0, 1, 2, 3, 4, 5])
    todo, skipped = split_batch(c, cols)
    assert _plain(skipped, cols) == [(base, 0, [1, 2]), (wave_key(base, 1), 0, [0])]
    assert _plain(todo, cols) == [(part_key("u", 3), 0, [3, 4, 5])]
