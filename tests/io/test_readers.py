"""read_units: formats x compressions, unit splitting, ids, error rows, skip_units, bytes_read."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.config import InputConfig
from pipeline.io.readers import ERROR_KINDS, ROW_SCHEMA, read_units, unit_id
from pipeline.io.sources import SourceFile, list_sources

COMPRESSIONS = {"none": "", "gzip": ".gz", "bz2": ".bz2", "zstd": ".zst"}
N_ROWS = 25
RPU = 10


# ------------------------------------------------------------------------ helpers


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


# ------------------------------------------------------------------- round trips


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


def test_text_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", b"first\r\n  indented  \nthird")
    src, cfg = source(path)
    rows = rows_of(read_all(src, cfg))
    assert [r["text"] for r in rows] == ["first", "  indented  ", "third"]
    # a trailing newline does not make an extra row
    path2 = write(tmp_path / "b.txt", b"one\ntwo\n")
    src2, cfg2 = source(path2)
    assert [r["text"] for r in rows_of(read_all(src2, cfg2))] == ["one", "two"]


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


def test_parquet_columns_and_forced_format(tmp_path: Path) -> None:
    table = pa.table({"body": pa.array(["a", "b"], pa.large_string()), "x": [1, 2]})
    path = tmp_path / "data.bin"
    pq.write_table(table, path)
    src, cfg = source(path, format="parquet", text_field="body")
    assert src.format == "parquet"
    rows = rows_of(read_all(src, cfg))
    assert [r["text"] for r in rows] == ["a", "b"]
    assert total_bytes(read_all(src, cfg)) == src.size


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


def test_speed_short_jsonl_lines(tmp_path: Path) -> None:
    n = 100_000
    data = "".join(f'{{"id": {i}, "text": "a short line of text {i}"}}\n' for i in range(n))
    path = write(tmp_path / "speed.jsonl", data.encode())
    src, cfg = source(path, id_field="id")
    t0 = time.perf_counter()
    count = sum(t.num_rows for t in read_units(src, cfg, 1000))
    rate = count / (time.perf_counter() - t0)
    assert count == n
    assert rate > 30_000, f"{rate:.0f} rows/s"  # target is > 50k rows/s on one core; loose for busy machines


# ------------------------------------------------------------------- bad input


def _three_line_jsonl(tmp_path: Path, bad: bytes, name: str = "bad.jsonl") -> Path:
    return write(tmp_path / name, b'{"id": 1, "text": "good before"}\n' + bad + b'\n{"id": 3, "text": "good after"}\n')


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


# ------------------------------------------------------------------- skip_units


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
