"""Units: ids, and skipping the units a resumed run already committed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io.readers import unit_id
from pipeline.io.sources import SourceFile
from tests.io.readhelp import check_tables, make_file, read_all, source, total_bytes


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
