"""read_units, the public entry: every format x compression round trips, ids, streaming, a file that cannot be opened."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pipeline.io.readers import CommittedState, read_units, unit_id
from tests.io.readhelp import (
    COMPRESSIONS,
    N_ROWS,
    check_tables,
    expected_text,
    make_file,
    read_all,
    rows_of,
    source,
    total_bytes,
    write,
)


@pytest.mark.parametrize("compression", list(COMPRESSIONS))
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text", "parquet"])
def test_round_trip(tmp_path: Path, fmt: str, compression: str) -> None:
    path = make_file(tmp_path, fmt, compression)
    id_field = None if fmt == "text" else "id"
    src, cfg = source(path, id_field=id_field)
    assert src.format == fmt
    assert src.compression == (None if compression == "none" else compression)
    tables = read_all(src, cfg)
    check_tables(tables, src)

    assert [t.num_rows for t in tables] == [10, 10, 5]
    assert [t.column("unit")[0].as_py() for t in tables] == [f"{src.key}-{u:08d}" for u in range(3)]
    rows = rows_of(tables)
    assert [r["position"] for r in rows] == list(range(N_ROWS))
    assert [r["text"] for r in rows] == [expected_text(fmt, i) for i in range(N_ROWS)]
    assert all(r["error_kind"] is None for r in rows)
    if id_field:
        assert [r["row_id"] for r in rows] == [str(100 + i) for i in range(N_ROWS)]
    else:
        assert [r["row_id"] for r in rows] == [f"{src.uri}#{i}" for i in range(N_ROWS)]
    assert total_bytes(tables) == src.size == path.stat().st_size


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "text", "parquet"])
def test_default_ids_are_stable(tmp_path: Path, fmt: str) -> None:
    path = make_file(tmp_path, fmt, "gzip")
    src, cfg = source(path)
    first = read_all(src, cfg, rpu=4)
    second = read_all(src, cfg, rpu=4)
    assert [t.equals(u) for t, u in zip(first, second)] == [True] * len(first) and len(first) == len(second) == 7
    ids = [r["row_id"] for r in rows_of(first)]
    assert ids == [f"{src.uri}#{i}" for i in range(N_ROWS)]
    assert src.uri == str(path)  # absolute local path, no file://


def test_read_is_streaming(tmp_path: Path) -> None:
    """The first unit comes out long before the whole file is read."""
    line = json.dumps({"text": "y" * 200}) + "\n"
    path = write(tmp_path / "big.jsonl", (line * 40_000).encode())  # about 8.5 MB
    src, cfg = source(path)
    it = read_units(src, cfg, 100)
    first = next(it)
    assert first.num_rows == 100
    assert 0 < first.column("bytes_read")[0].as_py() < src.size / 2
    it.close()


def test_unopenable_file_gives_one_read_error_row(tmp_path: Path) -> None:
    path = write(tmp_path / "gone.jsonl", b'{"text": "a"}\n')
    src, cfg = source(path)
    path.unlink()
    tables = read_all(src, cfg)
    check_tables(tables, src)
    (row,) = rows_of(tables)
    assert row["position"] == 0 and row["error_kind"] == "read_error"
    assert "cannot open" in row["error_message"] and str(path) in row["error_message"]
    assert total_bytes(tables) == src.size  # progress still completes


# ---------------------------------------------------- read errors say which rows they cover
#
# A stream that breaks at position p leaves every row from p on unread: one read_error row
# stands for all of them (covers_to = -1: to the end of the file). It lands at the first
# position >= p that is not committed yet, so a resumed run never hides it in a unit it skips.


def _lines(n: int) -> bytes:
    return "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(n)).encode()


def _truncated_gzip(tmp_path: Path, n: int = 3000) -> Path:
    data = gzip.compress(_lines(n))
    return write(tmp_path / "cut.jsonl.gz", data[: len(data) * 2 // 3])


def test_read_error_row_covers_the_rest_of_the_file(tmp_path: Path) -> None:
    src, cfg = source(_truncated_gzip(tmp_path))
    tables = read_all(src, cfg, rpu=100)
    check_tables(tables, src, rpu=100)
    rows = rows_of(tables)
    err = rows[-1]
    p = err["position"]
    assert 100 < p < 3000 and [r["position"] for r in rows] == list(range(p + 1))
    assert err["error_kind"] == "read_error" and err["covers_to"] == -1
    assert err["error_message"].startswith(f"rows from position {p} to the end of the file could not be read: ")
    assert "EOFError" in err["error_message"]
    assert all(r["covers_to"] is None for r in rows[:-1])
    assert all(r["file_rows"] is None for r in rows)  # the file's length is unknown


def test_open_failure_is_not_hidden_in_a_committed_unit(tmp_path: Path) -> None:
    """The issue's scenario: unit 0 committed, then the file cannot be opened on the rerun."""
    path = write(tmp_path / "gone.jsonl", _lines(30))
    src, cfg = source(path)
    path.unlink()
    tables = list(read_units(src, cfg, 10, CommittedState(full_units=frozenset({0}))))
    check_tables(tables, src)
    (row,) = rows_of(tables)
    assert (row["position"], row["unit"], row["error_kind"], row["covers_to"]) == (10, unit_id(src, 10, 10), "read_error", -1)
    assert row["error_message"].startswith("rows from position 10 to the end of the file could not be read: cannot open ")
    assert total_bytes(tables) == src.size


def test_mid_file_failure_lands_after_committed_rows(tmp_path: Path) -> None:
    src, cfg = source(_truncated_gzip(tmp_path))
    p = rows_of(read_all(src, cfg, rpu=100))[-1]["position"]  # where the stream breaks
    u = p // 100
    # p's unit is committed; the next one partly (two ranges): the error goes to the first gap
    committed = CommittedState(
        full_units=frozenset(range(u + 1)) - {u - 1},
        ranges={u + 1: ((100 * (u + 1), 100 * (u + 1) + 19), (100 * (u + 1) + 40, 100 * (u + 1) + 49))},
    )
    tables = list(read_units(src, cfg, 100, committed))
    check_tables(tables, src, rpu=100)
    rows = rows_of(tables)
    assert [r["position"] for r in rows[:-1]] == list(range(100 * (u - 1), 100 * u))  # the one unit not committed
    err = rows[-1]
    q = 100 * (u + 1) + 20
    assert (err["position"], err["error_kind"], err["covers_to"]) == (q, "read_error", -1)
    assert err["error_message"].startswith(f"rows from position {q} to the end of the file could not be read: ")
    assert f"after position {p - 1}" in err["error_message"]
    assert total_bytes(tables) == src.size
