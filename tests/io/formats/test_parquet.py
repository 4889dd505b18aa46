"""Parquet: column types, forced format, bad values."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.io.readhelp import read_all, rows_of, source, total_bytes


def test_parquet_columns_and_forced_format(tmp_path: Path) -> None:
    table = pa.table({"body": pa.array(["a", "b"], pa.large_string()), "x": [1, 2]})
    path = tmp_path / "data.bin"
    pq.write_table(table, path)
    src, cfg = source(path, format="parquet", text_field="body")
    assert src.format == "parquet"
    rows = rows_of(read_all(src, cfg))
    assert [r["text"] for r in rows] == ["a", "b"]
    assert total_bytes(read_all(src, cfg)) == src.size


def test_parquet_bad_values(tmp_path: Path) -> None:
    table = pa.table(
        {
            "id": pa.array([1, 2, None, 4, 5, 6]),
            "text": pa.array(["good", None, "no id", "", "nul\x00", "  "]),
        }
    )
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    src, cfg = source(path, id_field="id")
    rows = rows_of(read_all(src, cfg))
    assert [r["error_kind"] for r in rows] == [None, "empty_text", "missing_field", "empty_text", "invalid_text", "empty_text"]
    assert [r["row_id"] for r in rows] == ["1", "2", f"{src.uri}#2", "4", "5", "6"]
    assert "row 2: id field 'id' is null" in rows[2]["error_message"]


def test_parquet_missing_and_wrong_type_columns(tmp_path: Path) -> None:
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"text": pa.array([1, 2]), "body": ["a", "b"]}), path)
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert [r["error_kind"] for r in rows] == ["malformed_record"] * 2
    assert "column 'text' has type int64, expected string" in rows[0]["error_message"]
    src, cfg = source(path, text_field="missing")
    rows = rows_of(read_all(src, cfg))
    assert [r["error_kind"] for r in rows] == ["missing_field"] * 2
    assert "columns present: text, body" in rows[0]["error_message"]
