"""JSON Lines: ids, blank lines, BOM, every kind of bad record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.io.readhelp import assert_one_error, check_tables, read_all, rows_of, source, total_bytes, write


def test_string_ids_and_unit_of_one(tmp_path: Path) -> None:
    lines = [json.dumps({"key": f"k-{i}", "text": f"t{i}"}) for i in range(3)]
    path = write(tmp_path / "a.ndjson", ("\n".join(lines)).encode())  # no final newline
    src, cfg = source(path, id_field="key")
    tables = read_all(src, cfg, rpu=1)
    check_tables(tables, src, rpu=1)
    assert [t.num_rows for t in tables] == [1, 1, 1]
    assert [r["row_id"] for r in rows_of(tables)] == ["k-0", "k-1", "k-2"]
    assert [r["text"] for r in rows_of(tables)] == ["t0", "t1", "t2"]
    assert total_bytes(tables) == src.size


def test_custom_text_field_and_float_id(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", b'{"body": "hello", "n": 1.5}\n{"body": "x", "n": 7}\n')
    src, cfg = source(path, text_field="body", id_field="n")
    rows = rows_of(read_all(src, cfg))
    assert [(r["row_id"], r["text"]) for r in rows] == [("1.5", "hello"), ("7", "x")]


def test_jsonl_blank_lines_count_in_positions(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", b'{"text": "a"}\n\n   \n\t\r\n{"text": "b"}\n\n')
    src, cfg = source(path)
    tables = read_all(src, cfg, rpu=2)
    check_tables(tables, src, rpu=2)
    rows = rows_of(tables)
    assert [(r["position"], r["text"]) for r in rows] == [(0, "a"), (4, "b")]
    assert [t.num_rows for t in tables] == [1, 1]  # units 0 and 2; unit 1 holds only blank lines
    assert total_bytes(tables) == src.size


def test_bom_and_deep_nesting(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"text": "a"}\n' + b"[" * 100_000 + b'\n{"text": "b"}\n')
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert [(r["text"], r["error_kind"]) for r in rows] == [("a", None), (None, "malformed_record"), ("b", None)]
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello\n")
    src, cfg = source(path)
    assert [r["text"] for r in rows_of(read_all(src, cfg))] == ["hello"]


def _three_line_jsonl(tmp_path: Path, bad: bytes, name: str = "bad.jsonl") -> Path:
    return write(tmp_path / name, b'{"id": 1, "text": "good before"}\n' + bad + b'\n{"id": 3, "text": "good after"}\n')


JSONL_BAD = [
    (b'{"id": 2, "text": ""}', "empty_text", "line 2: field 'text' is empty"),
    (b'{"id": 2, "text": null}', "empty_text", "is null"),
    (b'{"id": 2, "text": " \\t\\n  "}', "empty_text", "only whitespace"),
    (b'{"id": 2, "text": "caf\xe9"}', "invalid_utf8", "line 2: invalid UTF-8"),
    (b'{"id": 2, "text": "a\\u0000b"}', "invalid_text", "NUL"),
    (b'{"id": 2, "text": "bad \\ud800 surrogate"}', "invalid_text", "surrogate"),
    (b'{"id": 2, "text": "a" "b": 1}', "malformed_record", "line 2: invalid JSON: Expecting ',' delimiter"),
    (b'{"id": 2, "text": "trunc', "malformed_record", "invalid JSON"),
    (b'[1, 2, 3]', "malformed_record", "expected a JSON object, got an array"),
    (b'"just a string"', "malformed_record", "expected a JSON object"),
    (b'{"id": 2, "text": 42}', "malformed_record", "field 'text' is a number, not a string"),
    (b'{"id": 2, "text": ["a"]}', "malformed_record", "not a string"),
    (b'{"id": 2, "body": "x"}', "missing_field", "field 'text' missing; fields present: id, body"),
    (b'{"text": "no id here"}', "missing_field", "id field 'id' missing; fields present: text"),
    (b'{"id": null, "text": "null id"}', "missing_field", "id field 'id' is null"),
    (b'{"id": {"a": 1}, "text": "object id"}', "malformed_record", "expected a string or a number"),
]


@pytest.mark.parametrize("bad,kind,needle", JSONL_BAD, ids=[k + "-" + str(i) for i, (_, k, _n) in enumerate(JSONL_BAD)])
def test_jsonl_bad_record(tmp_path: Path, bad: bytes, kind: str, needle: str) -> None:
    src, cfg = source(_three_line_jsonl(tmp_path, bad), id_field="id")
    tables = read_all(src, cfg)
    check_tables(tables, src)
    rows = rows_of(tables)
    err = assert_one_error(rows, 1, kind, needle)
    # the id is kept when the record has a usable one, else the positional id stands in
    try:
        # undecodable bytes (usually in the text) don't hide a readable id either
        has_id = json.loads(bad.decode("utf-8", "surrogateescape")).get("id") == 2
    except (ValueError, AttributeError):
        has_id = False
    assert err["row_id"] == ("2" if has_id else f"{src.uri}#1")
    assert [r["row_id"] for r in rows if r is not err] == ["1", "3"]
    assert [r["text"] for r in rows if r is not err] == ["good before", "good after"]


def test_bad_rows_are_never_dropped(tmp_path: Path) -> None:
    """A mixed file: one row per non-blank line, whatever the line holds."""
    lines = [b'{"text": "ok"}', b"garbage", b"\xff\xfe", b"[]", b'{"text": ""}', b"   ", b'{"x": 1}', b'{"text": "ok2"}']
    path = write(tmp_path / "mixed.jsonl.zst", b"\n".join(lines) + b"\n", "zstd")
    src, cfg = source(path)
    tables = read_all(src, cfg, rpu=3)
    check_tables(tables, src, rpu=3)
    rows = rows_of(tables)
    assert [r["position"] for r in rows] == [0, 1, 2, 3, 4, 6, 7]
    assert [r["error_kind"] for r in rows] == [
        None, "malformed_record", "invalid_utf8", "malformed_record", "empty_text", "missing_field", None,
    ]
    assert total_bytes(tables) == src.size


def test_jsonl_crlf_and_lone_cr_line_ends(tmp_path: Path) -> None:
    """JSON never holds a raw \\r inside a string, so a lone \\r ends a line like \\n and \\r\\n."""
    path = write(tmp_path / "eol.jsonl", b'{"text": "a"}\r\n{"text": "b"}\r{"text": "c"}\r\n\r\n{"text": "e\\r\\n"}\r')
    src, cfg = source(path)
    tables = read_all(src, cfg, rpu=2)
    check_tables(tables, src, rpu=2)
    rows = rows_of(tables)
    assert [(r["position"], r["text"]) for r in rows] == [(0, "a"), (1, "b"), (2, "c"), (4, "e\r\n")]
    assert total_bytes(tables) == src.size
