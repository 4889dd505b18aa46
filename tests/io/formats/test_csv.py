"""CSV: delimiters, BOM, big fields, bad records, missing columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.io.readers import unit_id
from tests.io.readhelp import assert_one_error, check_tables, read_all, rows_of, source, write


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


# ------------------------------------------------------ malformed quoting: strict, then resynchronised
#
# Python's default csv reader takes a stray quote as the start of a quoted field and swallows
# the following lines into it without an error. Every physical line that is not part of a
# valid quoted field must come back as a row or an error: rows + errors = records.

HEADER = b"id,text,other\n"


def _csv(tmp_path: Path, body: bytes, name: str = "q.csv") -> list[dict]:
    src, cfg = source(write(tmp_path / name, HEADER + body), id_field="id")
    tables = read_all(src, cfg, rpu=3)
    check_tables(tables, src, rpu=3)
    rows = rows_of(tables)
    assert [r["position"] for r in rows] == list(range(len(rows)))
    return rows


def test_csv_stray_quote_does_not_swallow_the_next_lines(tmp_path: Path) -> None:
    rows = _csv(tmp_path, b'1,good before,x\n2,"stray quote,x\n3,next row,y\n4,"quoted, fine",z\n5,last,w\n')
    assert [(r["row_id"], r["text"], r["error_kind"]) for r in rows] == [
        ("1", "good before", None),
        (rows[1]["row_id"], None, "malformed_record"),
        ("3", "next row", None),
        ("4", "quoted, fine", None),
        ("5", "last", None),
    ]
    msg = rows[1]["error_message"]
    assert "CSV record 1 (line 3)" in msg and "quote" in msg, msg


def test_csv_unclosed_quote_to_the_end_of_the_file(tmp_path: Path) -> None:
    rows = _csv(tmp_path, b'1,a,x\n2,"never closed,x\n3,b,y\n4,c,z\n')
    assert [(r["text"], r["error_kind"]) for r in rows] == [("a", None), (None, "malformed_record"), ("b", None), ("c", None)]


def test_csv_text_after_a_closing_quote_is_malformed(tmp_path: Path) -> None:
    rows = _csv(tmp_path, b'1,"ab"c,x\n2,fine,y\n')
    assert [(r["text"], r["error_kind"]) for r in rows] == [(None, "malformed_record"), ("fine", None)]


def test_csv_multiline_quoted_field_stays_one_record(tmp_path: Path) -> None:
    """A quoted field over several lines is valid CSV: it must stay one record, also after a
    bad record has made the reader resynchronise."""
    body = b'1,"two\nlines",x\n2,"bad"quote,y\n3,"three\nmore\nlines",z\n4,"stray,w\n5,end,v\n'
    rows = _csv(tmp_path, body)
    assert [(r["text"], r["error_kind"]) for r in rows] == [
        ("two\nlines", None),
        (None, "malformed_record"),
        ("three\nmore\nlines", None),
        (None, "malformed_record"),
        ("end", None),
    ]


def test_csv_rows_plus_errors_equal_records_with_skipped_units(tmp_path: Path) -> None:
    """Resynchronising gives the same positions whether units are skipped or not."""
    lines = []
    for i in range(40):
        if i % 7 == 3:
            lines.append(f'{i},"stray {i},x')
        elif i % 11 == 5:
            lines.append(f'{i},"ok"bad,x')
        else:
            lines.append(f"{i},text {i},x")
    path = write(tmp_path / "many.csv", HEADER + ("\n".join(lines) + "\n").encode())
    src, cfg = source(path, id_field="id")
    rows = rows_of(read_all(src, cfg, rpu=10))
    assert len(rows) == 40
    bad = {i for i in range(40) if i % 7 == 3 or i % 11 == 5}
    assert {r["position"] for r in rows if r["error_kind"] == "malformed_record"} == bad
    assert [r["text"] for r in rows if r["error_kind"] is None] == [f"text {i}" for i in range(40) if i not in bad]
    skip = {unit_id(src, 10, 10), unit_id(src, 30, 10)}
    resumed = rows_of(read_all(src, cfg, rpu=10, skip=skip))
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("bytes_read", "file_rows")} for r in rs]  # noqa: E731
    assert strip(resumed) == strip([r for r in rows if r["position"] // 10 in (0, 2)])


# ------------------------------------------------------------------------ delimiters and line ends


def test_tsv_is_tab_separated_by_extension(tmp_path: Path) -> None:
    data = b"id\ttext\n1\ta, b and c\n2\tsecond\n"
    for name, compression in (("a.tsv", "none"), ("b.tsv.gz", "gzip")):
        src, cfg = source(write(tmp_path / name, data, compression), id_field="id")
        rows = rows_of(read_all(src, cfg))
        assert [(r["row_id"], r["text"]) for r in rows] == [("1", "a, b and c"), ("2", "second")], name
    # an explicit delimiter wins over the extension
    src, cfg = source(write(tmp_path / "c.tsv", b"id,text\n1,x\ty\n"), id_field="id", csv_delimiter=",")
    assert [r["text"] for r in rows_of(read_all(src, cfg))] == ["x\ty"]
    src, cfg = source(write(tmp_path / "d.csv", b"id;text\n1;z\n"), id_field="id", csv_delimiter=";")
    assert [r["text"] for r in rows_of(read_all(src, cfg))] == ["z"]


def test_csv_old_mac_and_windows_line_endings(tmp_path: Path) -> None:
    for name, eol in (("mac.csv", b"\r"), ("win.csv", b"\r\n")):
        src, cfg = source(write(tmp_path / name, eol.join([b"id,text", b"1,a", b'2,"b' + eol + b'c"', b"3,d"]) + eol), id_field="id")
        rows = rows_of(read_all(src, cfg))
        assert [(r["row_id"], r["text"]) for r in rows] == [("1", "a"), ("2", "b" + eol.decode() + "c"), ("3", "d")], name


def test_csv_bad_record_among_lines_fed_again(tmp_path: Path) -> None:
    """Line 2 is fine inside the stray quote's field ("" is an escaped quote) but bad on its
    own: the lines after it, already taken once, must still be read."""
    rows = _csv(tmp_path, b'1,"stray,a\n2,""x,b\n3,ok,c\n4,"q"bad,d\n5,end,e\n')
    assert [(r["text"], r["error_kind"]) for r in rows] == [
        (None, "malformed_record"), (None, "malformed_record"), ("ok", None), (None, "malformed_record"), ("end", None),
    ]
