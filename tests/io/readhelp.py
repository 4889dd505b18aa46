"""Shared helpers of the reader tests: writing input files, reading them back, invariants."""

from __future__ import annotations

import bz2
import gzip
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.config import InputConfig
from pipeline.io.readers import ERROR_KINDS, ROW_SCHEMA, read_units, unit_id
from pipeline.io.sources import SourceFile, list_sources


COMPRESSIONS = {"none": "", "gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}
N_ROWS = 25
RPU = 10


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data)
    if compression == "bz2":
        return bz2.compress(data)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def write(path: Path, data: bytes, compression: str = "none") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(data, compression))
    return path


def source(path: Path, **cfg_kwargs) -> tuple[SourceFile, InputConfig]:
    cfg = InputConfig(paths=[str(path)], **cfg_kwargs)
    (src,) = list_sources(cfg)
    return src, cfg


def read_all(src: SourceFile, cfg: InputConfig, rpu: int = RPU, skip=frozenset()) -> list[pa.Table]:
    return list(read_units(src, cfg, rpu, skip))


def rows_of(tables: list[pa.Table]) -> list[dict]:
    return [r for t in tables for r in t.to_pylist()]


def check_tables(tables: list[pa.Table], src: SourceFile, rpu: int = RPU) -> None:
    """Invariants every yielded table must keep."""
    for t in tables:
        assert t.schema.equals(ROW_SCHEMA), t.schema
        assert t.num_rows > 0
        units = set(t.column("unit").to_pylist())
        assert len(units) == 1
        (u,) = units
        positions = t.column("position").to_pylist()
        assert all(unit_id(src, p, rpu) == u for p in positions)
        assert positions == sorted(positions)
        assert t.column("unit_rows").to_pylist() == [t.num_rows] * t.num_rows
        assert set(t.column("source").to_pylist()) == {src.uri}
        b = t.column("bytes_read").to_pylist()
        assert b[0] >= 0 and all(x == 0 for x in b[1:])
        for r in t.to_pylist():
            assert r["row_id"]
            if r["error_kind"] is None:
                assert isinstance(r["text"], str) and r["text"].strip()
                assert r["error_message"] is None
            else:
                assert r["text"] is None
                assert r["error_kind"] in ERROR_KINDS
                assert r["error_message"]
            # a read_error row stands for the rest of the file; every other row for itself
            assert r["covers_to"] == (-1 if r["error_kind"] == "read_error" else None)


def total_bytes(tables: list[pa.Table]) -> int:
    return sum(sum(t.column("bytes_read").to_pylist()) for t in tables)


def doc(i: int) -> str:
    return f"document {i}: caf\u00e9, \"quoted\", comma, and ünïcödé \u2603"


def make_file(tmp_path: Path, fmt: str, compression: str, n: int = N_ROWS) -> Path:
    """n good records, with id = 100 + i and text = doc(i)."""
    ext = COMPRESSIONS[compression]
    if fmt == "jsonl":
        data = "".join(json.dumps({"id": 100 + i, "text": doc(i), "other": [i]}) + "\n" for i in range(n))
        return write(tmp_path / f"data.jsonl{ext}", data.encode(), compression)
    if fmt == "csv":
        buf = io.StringIO()
        import csv

        w = csv.writer(buf)
        w.writerow(["id", "text", "other"])
        for i in range(n):
            w.writerow([100 + i, doc(i) + ("\nsecond line" if i == 3 else ""), i])
        return write(tmp_path / f"data.csv{ext}", buf.getvalue().encode(), compression)
    if fmt == "text":
        data = "".join(doc(i) + "\n" for i in range(n))
        return write(tmp_path / f"data.txt{ext}", data.encode(), compression)
    if fmt == "parquet":
        table = pa.table({"id": list(range(100, 100 + n)), "text": [doc(i) for i in range(n)]})
        sink = io.BytesIO()
        pq.write_table(table, sink, row_group_size=7)  # row groups cut across units
        return write(tmp_path / f"data.parquet{ext}", sink.getvalue(), compression)
    raise AssertionError(fmt)


def expected_text(fmt: str, i: int) -> str:
    return doc(i) + ("\nsecond line" if fmt == "csv" and i == 3 else "")


def assert_one_error(rows: list[dict], position: int, kind: str, needle: str, n: int = 3) -> dict:
    assert len(rows) == n
    bad = [r for r in rows if r["error_kind"] is not None]
    assert len(bad) == 1, bad
    (err,) = bad
    assert err["position"] == position
    assert err["error_kind"] == kind, err
    assert needle in err["error_message"], err["error_message"]
    assert all(r["text"] for r in rows if r is not err)
    return err
