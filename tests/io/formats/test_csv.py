"""CSV: delimiters, BOM, big fields, bad records, missing columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.io.readhelp import assert_one_error, read_all, rows_of, source, write


def test_csv_tsv_bom_and_big_field(tmp_path: Path) -> None:
    big = "x" * (10 * 1024 * 1024 + 7)
    data = "\ufefftext\tid\n" + f"hello\t1\n\n\"tab\tinside\"\t2\n{big}\t3\n"
    path = write(tmp_path / "a.tsv", data.encode("utf-8"))
    src, cfg = source(path, csv_delimiter="\t", id_field="id")
    assert src.format == "csv"
    rows = rows_of(read_all(src, cfg))
    assert [r["row_id"] for r in rows] == ["1", "2", "3"]
    assert [r["position"] for r in rows] == [0, 1, 2]  # the blank line is not a record
    assert rows[0]["text"] == "hello" and rows[1]["text"] == "tab\tinside"
    assert rows[2]["text"] == big and rows[2]["error_kind"] is None


CSV_BAD = [
    (b"2,only-two-fields", "malformed_record", "CSV record 1 (line 3): 2 fields, but the header has 3"),
    (b"2,too,many,fields", "malformed_record", "4 fields"),
    (b"2,,x", "empty_text", "field 'text' is empty"),
    (b'2,"   ",x', "empty_text", "only whitespace"),
    (b"2,caf\xe9,x", "invalid_utf8", "field 'text' is not valid UTF-8"),
    (b"2,nul\x00here,x", "invalid_text", "NUL"),
    (b",no id,x", "missing_field", "id field 'id' is empty"),
]


@pytest.mark.parametrize("bad,kind,needle", CSV_BAD, ids=[k + "-" + str(i) for i, (_, k, _n) in enumerate(CSV_BAD)])
def test_csv_bad_record(tmp_path: Path, bad: bytes, kind: str, needle: str) -> None:
    path = write(tmp_path / "bad.csv", b"id,text,other\n1,good before,x\n" + bad + b"\n3,good after,x\n")
    src, cfg = source(path, id_field="id")
    rows = rows_of(read_all(src, cfg))
    assert_one_error(rows, 1, kind, needle)
    assert [r["row_id"] for r in rows] == ["1", f"{src.uri}#1" if kind in ("missing_field", "malformed_record") else "2", "3"]


def test_csv_missing_text_column(tmp_path: Path) -> None:
    path = write(tmp_path / "nocol.csv", b"id,body\n1,a\n2,b\n")
    src, cfg = source(path, id_field="id")
    rows = rows_of(read_all(src, cfg))
    assert [r["error_kind"] for r in rows] == ["missing_field", "missing_field"]
    assert [r["row_id"] for r in rows] == ["1", "2"]
    assert "column 'text' missing; columns present: id, body" in rows[0]["error_message"]


def test_csv_missing_id_column(tmp_path: Path) -> None:
    path = write(tmp_path / "noid.csv", b"text\na\n")
    src, cfg = source(path, id_field="id")
    (row,) = rows_of(read_all(src, cfg))
    assert row["error_kind"] == "missing_field" and "id column 'id' missing" in row["error_message"]


def test_csv_header_only_and_empty(tmp_path: Path) -> None:
    for name, data in (("h.csv", b"id,text\n"), ("e.csv", b"")):
        src, cfg = source(write(tmp_path / name, data))
        assert read_all(src, cfg) == []
