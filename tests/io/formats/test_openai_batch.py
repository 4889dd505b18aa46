"""OpenAI batch request files: custom_id as the row id, the request as the text, every bad
line one error record of a clear kind."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.tasks.chat import read_request
from tests.io.readhelp import check_tables, read_all, rows_of, source, total_bytes, write


def line(cid, url="/v1/chat/completions", body=None, **extra) -> str:
    obj = {"custom_id": cid, "method": "POST", "url": url,
           "body": body if body is not None else {"messages": [{"role": "user", "content": f"hi {cid}"}]}, **extra}
    return json.dumps(obj)


def read(tmp_path: Path, lines: list[str], rpu: int = 10, skip=frozenset(), name: str = "batch.jsonl") -> list[dict]:
    path = write(tmp_path / name, ("\n".join(lines) + "\n").encode())
    src, cfg = source(path, format="openai_batch")
    tables = read_all(src, cfg, rpu=rpu, skip=skip)
    check_tables(tables, src, rpu=rpu)
    if not skip:
        assert total_bytes(tables) == src.size
    return rows_of(tables)


def test_chat_and_completion_lines_become_requests(tmp_path: Path) -> None:
    rows = read(tmp_path, [
        line("a"),
        line("b", url="/v1/completions", body={"prompt": "Once upon", "max_tokens": 3}),
    ])
    assert [r["row_id"] for r in rows] == ["a", "b"]
    assert [r["error_kind"] for r in rows] == [None, None]
    assert read_request(rows[0]["text"]) == ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi a"}]})
    assert read_request(rows[1]["text"]) == ("/v1/completions", {"prompt": "Once upon", "max_tokens": 3})


def test_every_bad_line_is_one_error_of_its_kind(tmp_path: Path) -> None:
    lines = [
        line("ok"),
        '{"custom_id": "x", "method": "POST"',                       # cut JSON
        "[1, 2]",                                                     # not an object
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),  # no custom_id
        json.dumps({"custom_id": 7, "method": "POST", "url": "/v1/chat/completions", "body": {}}),
        json.dumps({"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"}),
        line("get", method="GET"),
        line("emb", url="/v1/embeddings", body={"input": "x"}),
        line("str-body", body="just text"),
        line("ok"),                                                   # the id of line 1 again
        line("ok2"),
    ]
    rows = read(tmp_path, lines)
    got = [(r["position"], r["row_id"], r["error_kind"]) for r in rows]
    src = rows[0]["source"]
    assert got == [
        (0, "ok", None),
        (1, f"{src}#1", "malformed_record"),
        (2, f"{src}#2", "malformed_record"),
        (3, f"{src}#3", "missing_field"),
        (4, f"{src}#4", "malformed_record"),
        (5, "nobody", "missing_field"),
        (6, "get", "invalid_request"),
        (7, "emb", "unsupported_request"),
        (8, "str-body", "invalid_request"),
        (9, "ok", "duplicate_id"),
        (10, "ok2", None),
    ]
    msgs = {r["position"]: r["error_message"] for r in rows}
    assert "line 2: invalid JSON" in msgs[1]
    assert "'custom_id' missing" in msgs[3]
    assert "field 'body' missing" in msgs[5]
    assert "'/v1/embeddings' is not served" in msgs[7]
    assert "already used on line 1" in msgs[9]


def test_duplicate_found_in_a_skipped_unit(tmp_path: Path) -> None:
    """A resumed run skips committed units but still knows their ids: the later line stays the
    duplicate, whatever an earlier attempt committed."""
    lines = [line("a"), line("b"), line("a"), line("c")]
    full = read(tmp_path, lines, rpu=2)
    assert [r["error_kind"] for r in full] == [None, None, "duplicate_id", None]
    path = tmp_path / "batch.jsonl"
    src, cfg = source(path, format="openai_batch")
    from pipeline.io.readers import unit_id

    resumed = rows_of(read_all(src, cfg, rpu=2, skip=frozenset({unit_id(src, 0, 2)})))
    assert [(r["row_id"], r["error_kind"]) for r in resumed] == [("a", "duplicate_id"), ("c", None)]


def test_invalid_utf8_keeps_its_custom_id(tmp_path: Path) -> None:
    path = write(tmp_path / "b.jsonl",
                 b'{"custom_id": "u1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": "\xff"}}\n'
                 + line("u2").encode() + b"\n")
    src, cfg = source(path, format="openai_batch")
    rows = rows_of(read_all(src, cfg))
    assert [(r["row_id"], r["error_kind"]) for r in rows] == [("u1", "invalid_utf8"), ("u2", None)]


def test_config_ties_the_format_to_the_chat_task() -> None:
    import pytest
    from pydantic import ValidationError

    from pipeline.config import JobSpec

    spec = JobSpec.model_validate({"input": {"paths": ["x.jsonl"], "format": "openai_batch"}, "output": {"path": "o"}})
    assert list(spec.tasks.enabled()) == ["chat"]
    with pytest.raises(ValidationError, match="only tasks.chat answers"):
        JobSpec.model_validate({"input": {"paths": ["x.jsonl"], "format": "openai_batch"}, "output": {"path": "o"},
                                "tasks": {"sentiment": {}}})
    with pytest.raises(ValidationError, match="set input.format: openai_batch"):
        JobSpec.model_validate({"input": {"paths": ["x.jsonl"]}, "output": {"path": "o"}, "tasks": {"chat": {}}})
    with pytest.raises(ValidationError, match="custom_id"):
        JobSpec.model_validate({"input": {"paths": ["x.jsonl"], "format": "openai_batch", "id_field": "custom_id"},
                                "output": {"path": "o"}})
