"""Plain text: line endings and bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.io.readhelp import assert_one_error, check_tables, read_all, rows_of, source, total_bytes, write


def test_text_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"first\r\n  indented  \nthird")
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert [r["text"] for r in rows] == ["first", "  indented  ", "third"]
    # a trailing newline does not make an extra row
    path2 = write(tmp_path / "b.txt", b"one\ntwo\n")
    src2, cfg2 = source(path2)
    assert [r["text"] for r in rows_of(read_all(src2, cfg2))] == ["one", "two"]


TEXT_BAD = [
    (b"", "empty_text", "line 2: empty line"),
    (b"  \t ", "empty_text", "only whitespace"),
    (b"caf\xe9 au lait", "invalid_utf8", "line 2: invalid UTF-8 at byte 3"),
    (b"nul\x00inside", "invalid_text", "NUL"),
]


@pytest.mark.parametrize("bad,kind,needle", TEXT_BAD, ids=[k + "-" + str(i) for i, (_, k, _n) in enumerate(TEXT_BAD)])
def test_text_bad_line(tmp_path: Path, bad: bytes, kind: str, needle: str) -> None:
    path = write(tmp_path / "bad.txt", b"good before\n" + bad + b"\ngood after\n")
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert_one_error(rows, 1, kind, needle)


def test_text_old_mac_line_endings(tmp_path: Path) -> None:
    """Lines end with \\n, \\r\\n or a lone \\r (classic Mac OS); all three split lines."""
    path = write(tmp_path / "mac.txt", b"first\rsecond\r\rfourth\r\nfifth\nsixth\r")
    src, cfg = source(path)
    tables = read_all(src, cfg, rpu=2)
    check_tables(tables, src, rpu=2)
    rows = rows_of(tables)
    assert [(r["position"], r["text"], r["error_kind"]) for r in rows] == [
        (0, "first", None), (1, "second", None), (2, None, "empty_text"), (3, "fourth", None), (4, "fifth", None), (5, "sixth", None),
    ]
    assert total_bytes(tables) == src.size


def test_text_invalid_utf8_with_cr_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.txt", b"ok\rcaf\xe9\rfine")
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert [(r["text"], r["error_kind"]) for r in rows] == [("ok", None), (None, "invalid_utf8"), ("fine", None)]
    assert "line 2: invalid UTF-8 at byte 3" in rows[1]["error_message"]
