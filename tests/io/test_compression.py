"""Compressed inputs cut short or corrupt: the rows before the break, then one read error."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path

import pytest

from tests.io.readhelp import (
    COMPRESSIONS,
    check_tables,
    compress,
    read_all,
    rows_of,
    source,
    total_bytes,
    write,
)


def _gzip_lines(n: int) -> bytes:
    return gzip.compress("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(n)).encode())


@pytest.mark.parametrize("compression", ["gzip", "bz2", "zstd"])
def test_truncated_file_gives_read_error(tmp_path: Path, compression: str) -> None:
    raw = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(20_000)).encode()
    if compression == "bz2":
        data = bz2.compress(raw, compresslevel=1)  # 100 kB blocks: a cut keeps the blocks before it
    else:
        data = compress(raw, compression)
    path = write(tmp_path / f"trunc.jsonl{COMPRESSIONS[compression]}", data[: len(data) - 30])
    src, cfg = source(path)
    tables = read_all(src, cfg, rpu=1000)
    check_tables(tables, src, rpu=1000)
    rows = rows_of(tables)
    errors = [r for r in rows if r["error_kind"]]
    assert len(errors) == 1 and errors[0] is rows[-1]
    err = errors[0]
    assert err["error_kind"] == "read_error"
    assert "EOFError" in err["error_message"]
    good = rows[:-1]
    assert [r["text"] for r in good] == [f"line {i}" for i in range(len(good))]
    assert 1000 < len(good) < 20_000  # what could be decompressed before the cut survives
    assert err["position"] == len(good)
    assert err["row_id"] == f"{src.uri}#{len(good)}"
    assert total_bytes(tables) == src.size


def test_truncated_small_gzip(tmp_path: Path) -> None:
    data = _gzip_lines(25)
    path = write(tmp_path / "trunc.jsonl.gz", data[: len(data) - 12])  # cut the trailer and a bit of data
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert rows[-1]["error_kind"] == "read_error"
    assert [r["text"] for r in rows[:-1]] == [f"line {i}" for i in range(len(rows) - 1)]
    assert len(rows) - 1 >= 20


def test_corrupt_gzip_gives_read_error(tmp_path: Path) -> None:
    data = bytearray(_gzip_lines(2000))
    mid = len(data) // 2
    data[mid : mid + 64] = b"\xff" * 64
    path = write(tmp_path / "corrupt.jsonl.gz", bytes(data))
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg, rpu=500))
    assert rows[-1]["error_kind"] == "read_error"
    assert [r["error_kind"] for r in rows[:-1]] == [None] * (len(rows) - 1)
    assert [r["position"] for r in rows] == list(range(len(rows)))


def test_not_gzip_at_all(tmp_path: Path) -> None:
    path = write(tmp_path / "plain.jsonl.gz", b'{"text": "not compressed"}\n')
    src, cfg = source(path)
    (row,) = rows_of(read_all(src, cfg))
    assert row["position"] == 0 and row["error_kind"] == "read_error"
    assert "at the start" in row["error_message"]
