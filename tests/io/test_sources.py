"""list_sources: local folders and globs, formats, errors; s3:// against SeaweedFS; http:// loopback."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.io.readers import read_units
from pipeline.io.sources import InputError, SourceFile, list_sources


def touch(path: Path, data: bytes = b'{"text": "x"}\n') -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def uris(files: list[SourceFile]) -> list[str]:
    return [f.uri for f in files]


def jsonl(n: int, prefix: str = "doc") -> bytes:
    return "".join(json.dumps({"id": f"{prefix}-{i}", "text": f"{prefix} text {i}"}) + "\n" for i in range(n)).encode()


def read_rows(src: SourceFile, cfg: InputConfig, rpu: int = 4) -> tuple[list[dict], int]:
    tables = list(read_units(src, cfg, rpu))
    rows = [r for t in tables for r in t.to_pylist()]
    return rows, sum(sum(t.column("bytes_read").to_pylist()) for t in tables)


# --------------------------------------------------------------------------- local


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    touch(root / "a.jsonl")
    touch(root / "b.csv", b"text\nx\n")
    touch(root / "sub" / "c.txt.gz", gzip.compress(b"hello\n"))
    touch(root / "sub" / "deeper" / "d.parquet.zst")
    touch(root / "sub" / "e.ndjson.bz2")
    touch(root / "f.json.zstd")
    touch(root / ".hidden.jsonl")
    touch(root / "_SUCCESS")
    touch(root / "_tmp" / "g.jsonl")
    touch(root / ".git" / "h.jsonl")
    return root


def test_folder_is_recursive_and_skips_hidden(tree: Path) -> None:
    files = list_sources(InputConfig(paths=[str(tree)]))
    assert uris(files) == sorted(
        str(tree / p)
        for p in ("a.jsonl", "b.csv", "f.json.zstd", "sub/c.txt.gz", "sub/deeper/d.parquet.zst", "sub/e.ndjson.bz2")
    )
    by_name = {Path(f.uri).name: f for f in files}
    assert [(by_name[n].format, by_name[n].compression) for n in sorted(by_name)] == [
        ("jsonl", None),
        ("csv", None),
        ("text", "gzip"),
        ("parquet", "zstd"),
        ("jsonl", "bz2"),
        ("jsonl", "zstd"),
    ]
    a = by_name["a.jsonl"]
    st = os.stat(a.uri)
    assert a.size == st.st_size == 14
    assert a.fingerprint == f"size:{st.st_size}:mtime_ns:{st.st_mtime_ns}"
    assert a.key == hashlib.sha1(a.uri.encode()).hexdigest()[:16]


def test_explicit_underscore_file_is_kept(tree: Path) -> None:
    (f,) = list_sources(InputConfig(paths=[str(tree / "_tmp" / "g.jsonl")]))
    assert f.uri == str(tree / "_tmp" / "g.jsonl")


def test_globs(tree: Path) -> None:
    def ls(*patterns: str) -> list[str]:
        return [os.path.relpath(u, tree) for u in uris(list_sources(InputConfig(paths=[str(tree / p) for p in patterns])))]

    assert ls("*.jsonl") == ["a.jsonl"]  # not .hidden.jsonl, not nested
    assert ls("**/*.jsonl") == ["a.jsonl"]  # _tmp/ and .git/ stay hidden
    assert ls("sub/**/*") == ["sub/c.txt.gz", "sub/deeper/d.parquet.zst", "sub/e.ndjson.bz2"]
    assert ls("?.csv", "sub/*.gz") == ["b.csv", "sub/c.txt.gz"]
    assert ls("_tmp/*.jsonl") == ["_tmp/g.jsonl"]  # named explicitly: allowed
    assert ls("s*") == ["sub/c.txt.gz", "sub/deeper/d.parquet.zst", "sub/e.ndjson.bz2"]  # a matched folder is walked


def test_relative_paths_and_file_scheme(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    (f,) = list_sources(InputConfig(paths=["a.jsonl"]))
    assert f.uri == str(tree / "a.jsonl")
    (g,) = list_sources(InputConfig(paths=[f"file://{tree / 'a.jsonl'}"]))
    assert g == f


def test_dedup_and_sorting(tree: Path) -> None:
    cfg = InputConfig(paths=[str(tree / "sub"), str(tree / "b.csv"), str(tree), str(tree / "*.csv"), str(tree / "sub" / "c.txt.gz")])
    files = list_sources(cfg)
    assert len(files) == 6
    assert uris(files) == sorted(set(uris(files)))


def test_unknown_extension_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "ok.jsonl")
    bad = touch(tmp_path / "notes.md")
    with pytest.raises(InputError) as e:
        list_sources(InputConfig(paths=[str(tmp_path)]))
    assert str(bad) in str(e.value)
    assert "input.format" in str(e.value)
    touch(tmp_path / "noext")
    with pytest.raises(InputError, match="noext"):
        list_sources(InputConfig(paths=[str(tmp_path / "noext")]))


def test_format_override(tmp_path: Path) -> None:
    touch(tmp_path / "notes.md", b"line one\nline two\n")
    touch(tmp_path / "data.jsonl.gz", gzip.compress(b"a\n"))
    files = list_sources(InputConfig(paths=[str(tmp_path)], format="text"))
    assert [(Path(f.uri).name, f.format, f.compression) for f in files] == [
        ("data.jsonl.gz", "text", "gzip"),
        ("notes.md", "text", None),
    ]
    cfg = InputConfig(paths=[str(tmp_path / "notes.md")], format="text")
    rows, _ = read_rows(list_sources(cfg)[0], cfg)
    assert [r["text"] for r in rows] == ["line one", "line two"]


def test_nothing_matched_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "*.jsonl")
    with pytest.raises(InputError) as e:
        list_sources(InputConfig(paths=[missing]))
    assert missing in str(e.value)
    with pytest.raises(InputError, match="does-not-exist.jsonl"):
        list_sources(InputConfig(paths=[str(tmp_path / "does-not-exist.jsonl")]))
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "empty" / "_SUCCESS")
    with pytest.raises(InputError, match="empty"):
        list_sources(InputConfig(paths=[str(tmp_path / "empty")]))


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    p = touch(tmp_path / "a.jsonl", b'{"text": "one"}\n')
    cfg = InputConfig(paths=[str(p)])
    before = list_sources(cfg)[0]
    assert list_sources(cfg)[0] == before  # stable when nothing changed
    time.sleep(0.01)
    p.write_bytes(b'{"text": "two"}\n')  # same size, new mtime
    after = list_sources(cfg)[0]
    assert after.fingerprint != before.fingerprint and after.key == before.key


def test_unsupported_scheme_and_missing_gcs_client() -> None:
    with pytest.raises(InputError, match="unsupported URI scheme 'hdfs'"):
        list_sources(InputConfig(paths=["hdfs://namenode/data/x.jsonl"]))
    if importlib.util.find_spec("google.cloud.storage") is None:
        with pytest.raises(InputError, match="pip install google-cloud-storage"):
            list_sources(InputConfig(paths=["gs://bucket/data/"]))


# ------------------------------------------------------------------------------ S3


@pytest.fixture(scope="module")
def s3_data(s3_server, tmp_path_factory: pytest.TempPathFactory):
    """Bucket 'pipeline-in' with a small tree of objects."""
    local = tmp_path_factory.mktemp("s3src")
    bucket = "pipeline-in"
    objects = {
        "corpus/part-0.jsonl": jsonl(5, "p0"),
        "corpus/part-1.jsonl.gz": gzip.compress(jsonl(9, "p1")),
        "corpus/nested/part-2.jsonl": jsonl(3, "p2"),
        "corpus/_SUCCESS": b"",
        "corpus/.crc": b"x",
        "corpus/notes.csv": b"id,text\n1,csv row\n",
        "corpusx/other.jsonl": jsonl(1, "x"),
    }
    for key, data in objects.items():
        path = local / key.replace("/", "__")
        path.write_bytes(data)
        s3_server.upload(path, bucket, key)
    return bucket, objects


def test_s3_prefix(s3_data) -> None:
    bucket, objects = s3_data
    files = list_sources(InputConfig(paths=[f"s3://{bucket}/corpus/"]))
    assert uris(files) == [
        f"s3://{bucket}/corpus/nested/part-2.jsonl",
        f"s3://{bucket}/corpus/notes.csv",
        f"s3://{bucket}/corpus/part-0.jsonl",
        f"s3://{bucket}/corpus/part-1.jsonl.gz",
    ]
    for f in files:
        key = f.uri.split("/", 3)[3]
        assert f.size == len(objects[key])
        assert f.fingerprint == f"size:{f.size}:etag:{hashlib.md5(objects[key]).hexdigest()}"
    # a key that is not an object is read as a folder: same files, without the trailing slash
    assert list_sources(InputConfig(paths=[f"s3://{bucket}/corpus"])) == files


def test_s3_glob(s3_data) -> None:
    bucket, _ = s3_data
    files = list_sources(InputConfig(paths=[f"s3://{bucket}/corpus/*.jsonl*"]))
    assert uris(files) == [f"s3://{bucket}/corpus/part-0.jsonl", f"s3://{bucket}/corpus/part-1.jsonl.gz"]
    files = list_sources(InputConfig(paths=[f"s3://{bucket}/corpus/**/part-?.jsonl", f"s3://{bucket}/corpus*/o*"]))
    assert uris(files) == [
        f"s3://{bucket}/corpus/nested/part-2.jsonl",
        f"s3://{bucket}/corpus/part-0.jsonl",
        f"s3://{bucket}/corpusx/other.jsonl",
    ]


def test_s3_single_objects_are_read(s3_data) -> None:
    bucket, objects = s3_data
    cfg = InputConfig(paths=[f"s3://{bucket}/corpus/part-0.jsonl", f"s3://{bucket}/corpus/part-1.jsonl.gz"], id_field="id")
    plain, gz = list_sources(cfg)
    assert (plain.compression, gz.compression) == (None, "gzip")

    rows, nbytes = read_rows(plain, cfg)
    assert [r["row_id"] for r in rows] == [f"p0-{i}" for i in range(5)]
    assert nbytes == plain.size == len(objects["corpus/part-0.jsonl"])

    rows, nbytes = read_rows(gz, cfg)
    assert [r["text"] for r in rows] == [f"p1 text {i}" for i in range(9)]
    assert [r["position"] for r in rows] == list(range(9))
    assert all(r["source"] == gz.uri for r in rows)
    assert nbytes == gz.size


def test_s3_parquet(s3_server, tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(30)]}), path, row_group_size=8)
    uri = s3_server.upload(path, "pipeline-pq", "in/t.parquet")
    cfg = InputConfig(paths=["s3://pipeline-pq/in/"])
    (src,) = list_sources(cfg)
    assert src.uri == uri and src.format == "parquet"
    rows, nbytes = read_rows(src, cfg, rpu=7)
    assert [r["text"] for r in rows] == [f"row {i}" for i in range(30)]
    assert nbytes == src.size == path.stat().st_size


def test_s3_nothing_matched(s3_data) -> None:
    bucket, _ = s3_data
    for path in (f"s3://{bucket}/nothing-here/", f"s3://{bucket}/corpus/*.parquet", f"s3://{bucket}/corpus/part-9.jsonl"):
        with pytest.raises(InputError) as e:
            list_sources(InputConfig(paths=[path]))
        assert path in str(e.value)
    with pytest.raises(InputError, match="does not exist"):
        list_sources(InputConfig(paths=["s3://no-such-bucket-here/x.jsonl"]))


# ---------------------------------------------------------------------------- HTTP


def test_http_jsonl_and_gz(http_server) -> None:
    (http_server.root / "web").mkdir(exist_ok=True)
    plain = jsonl(6, "h")
    packed = gzip.compress(jsonl(11, "g"))
    (http_server.root / "web" / "a.jsonl").write_bytes(plain)
    (http_server.root / "web" / "b.jsonl.gz").write_bytes(packed)
    cfg = InputConfig(paths=[http_server.url + "web/b.jsonl.gz", http_server.url + "web/a.jsonl"])
    a, b = list_sources(cfg)
    assert (a.uri, b.uri) == (http_server.url + "web/a.jsonl", http_server.url + "web/b.jsonl.gz")
    assert (a.size, b.size) == (len(plain), len(packed))
    assert (a.format, a.compression, b.format, b.compression) == ("jsonl", None, "jsonl", "gzip")
    assert a.fingerprint.startswith(f"size:{len(plain)}:etag-or-last-modified:") and "GMT" in a.fingerprint

    rows, nbytes = read_rows(a, cfg)
    assert [r["text"] for r in rows] == [f"h text {i}" for i in range(6)]
    assert [r["row_id"] for r in rows] == [f"{a.uri}#{i}" for i in range(6)]
    assert nbytes == a.size
    rows, nbytes = read_rows(b, cfg)
    assert [r["text"] for r in rows] == [f"g text {i}" for i in range(11)]
    assert nbytes == b.size


def test_http_parquet_without_range_support(http_server) -> None:
    """The loopback server ignores Range headers: the Parquet file is spooled, not failed."""
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), http_server.root / "t.parquet")
    cfg = InputConfig(paths=[http_server.url + "t.parquet"])
    (src,) = list_sources(cfg)
    rows, nbytes = read_rows(src, cfg)
    assert [r["text"] for r in rows] == ["a", "b", "c"]
    assert nbytes == src.size > 0


def test_http_missing_is_an_error(http_server) -> None:
    url = http_server.url + "missing.jsonl"
    with pytest.raises(InputError, match="404"):
        list_sources(InputConfig(paths=[url]))


def test_http_unreachable_falls_back(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.jsonl"
    cfg = InputConfig(paths=[url], retry_backoff_s=0.01, retry_backoff_max_s=0.01)  # refused: retried, quickly here
    (src,) = list_sources(cfg)  # HEAD failed: listed anyway, size unknown
    assert src.size == -1 and src.fingerprint == "size:-1:etag-or-last-modified:"
    rows, _ = read_rows(src, cfg)
    assert len(rows) == 1 and rows[0]["error_kind"] == "read_error" and rows[0]["position"] == 0
