"""Units: ids, and skipping the units a resumed run already committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.io.readers import CommittedState, unit_id
from pipeline.io.sources import SourceFile
from tests.io.readhelp import check_tables, make_file, read_all, source, total_bytes, write


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text", "parquet"])
def test_skip_units(tmp_path: Path, fmt: str) -> None:
    path = make_file(tmp_path, fmt, "gzip", n=50)  # units 0..4 of 10 rows
    src, cfg = source(path)
    all_tables = read_all(src, cfg)
    assert len(all_tables) == 5
    ids = [t.column("unit")[0].as_py() for t in all_tables]

    skip = {ids[1], ids[3], "otherfile0000000-00000002"}
    tables = read_all(src, cfg, skip=skip)
    check_tables(tables, src)
    assert [t.column("unit")[0].as_py() for t in tables] == [ids[0], ids[2], ids[4]]
    for t in tables:
        u = int(t.column("unit")[0].as_py().rsplit("-", 1)[1])
        assert t.column("position").to_pylist() == list(range(u * 10, u * 10 + 10))
        assert t.drop_columns(["bytes_read"]).equals(all_tables[u].drop_columns(["bytes_read"]))
    assert total_bytes(tables) == src.size  # skipped bytes roll into the next yielded unit

    # trailing skipped units: their bytes still land in the last yielded table
    tables = read_all(src, cfg, skip={ids[3], ids[4]})
    assert [t.column("unit")[0].as_py() for t in tables] == ids[:3]
    assert total_bytes(tables) == src.size

    assert read_all(src, cfg, skip=set(ids)) == []


def test_unit_id() -> None:
    src = SourceFile(uri="/data/a.jsonl", size=1, fingerprint="x", format="jsonl", compression=None)
    assert len(src.key) == 16 and src.key == SourceFile("/data/a.jsonl", 2, "y", "csv", "gzip").key
    assert unit_id(src, 0, 1000) == f"{src.key}-00000000"
    assert unit_id(src, 999, 1000) == f"{src.key}-00000000"
    assert unit_id(src, 1000, 1000) == f"{src.key}-00000001"
    assert unit_id(src, 123456789, 10) == f"{src.key}-12345678"


def test_first_uncommitted_position() -> None:
    c = CommittedState(full_units=frozenset({0, 2}), ranges={1: ((10, 12), (15, 19)), 3: ((30, 30),)})
    assert [c.first_uncommitted(p, 10) for p in (0, 5, 10, 12, 13, 15, 19, 20, 29, 30, 31, 99)] == [
        13, 13, 13, 13, 13, 31, 31, 31, 31, 31, 31, 99]
    assert CommittedState().first_uncommitted(7, 10) == 7


def test_from_resume_state() -> None:
    src = SourceFile("/data/a.jsonl", 1, "x", "jsonl", None)
    done = {
        unit_id(src, 0, 10): {"full": True, "ranges": [[0, 9]]},
        unit_id(src, 10, 10): {"full": False, "ranges": [[15, 19], [10, 12]]},
        "0123456789abcdef-00000003": {"full": True, "ranges": [[30, 39]]},  # another file
    }
    c = CommittedState.from_resume(src, done)
    assert c.full_units == {0} and dict(c.ranges) == {1: ((10, 12), (15, 19))}


# ------------------------------------------------------------- how many rows the file holds


def _file_rows(tables) -> list:
    return [t.column("file_rows").to_pylist() for t in tables]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text", "parquet"])
def test_file_rows_on_the_last_table(tmp_path: Path, fmt: str) -> None:
    path = make_file(tmp_path, fmt, "gzip", n=45)  # units 0..4; the last holds 5 rows
    src, cfg = source(path)
    tables = read_all(src, cfg)
    assert _file_rows(tables) == [[None] * 10] * 4 + [[45] * 5]
    ids = [t.column("unit")[0].as_py() for t in tables]
    # the last units committed: the last table yielded carries the count
    tables = read_all(src, cfg, skip={ids[3], ids[4]})
    assert _file_rows(tables) == [[None] * 10] * 2 + [[45] * 10]
    tables = read_all(src, cfg, skip={ids[0], ids[2], ids[4]})
    assert _file_rows(tables) == [[None] * 10, [45] * 10]
    # every unit committed: nothing to yield (the count came with the last unit's first commit)
    assert read_all(src, cfg, skip=set(ids)) == []


def test_file_rows_counts_records_not_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps({"text": f"t{i}"}) if i % 4 else "  " for i in range(30)]  # 8 blank lines, 22 records
    path = write(tmp_path / "blanks.jsonl", ("\n".join(lines) + "\n").encode())
    src, cfg = source(path)
    tables = read_all(src, cfg)
    assert sum(t.num_rows for t in tables) == 22
    assert tables[-1].column("file_rows").to_pylist() == [22] * tables[-1].num_rows
    # blank lines in a skipped unit still count out of the total
    tables = read_all(src, cfg, skip={unit_id(src, 10, 10)})
    assert tables[-1].column("file_rows").to_pylist() == [22] * tables[-1].num_rows


def test_file_rows_when_the_file_ends_with_a_unit_of_blank_lines(tmp_path: Path) -> None:
    """The last unit holds only blank lines, so no table is made for it: the count must still
    reach the last table yielded (found by the property test of resume, tests/batch)."""
    path = write(tmp_path / "tail.jsonl", (json.dumps({"text": "t0"}) + "\n   \n  \n").encode())
    src, cfg = source(path)
    for rpu in (1, 2):
        tables = read_all(src, cfg, rpu=rpu)
        assert tables[-1].column("file_rows").to_pylist() == [1]
