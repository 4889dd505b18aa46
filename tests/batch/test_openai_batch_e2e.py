"""OpenAI batch files end to end through the CLI: a real local Ray cluster and a real vLLM
engine on the tiny model, then `vllm run-batch` (vLLM's own batch runner, another engine)
over the same chat lines, greedy, and the two outputs compared line by line.

And a batch file killed after its first hundred lines and run again: every custom_id exactly once in
the output files (which `vllm run-batch` cannot do: it starts over and rewrites its output).

Inputs: `chat.jsonl` holds only lines `vllm run-batch` accepts (it stops at the first line it
cannot parse); `mixed.jsonl` holds /v1/completions lines and every kind of bad line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.io.commit import read_dataset
from clijob import committed_rows, kill_group, run_cli, start_cli, wait_for

pytestmark = pytest.mark.engine

N_CHAT = 8
MAX_MODEL_LEN = 512
ENGINE_FLAGS = ("--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN))


def chat_line(i: int, model: str = "any") -> dict:
    return {"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "system", "content": "Answer briefly."},
                                                  {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
                     "temperature": 0, "max_tokens": 4 + i % 5}}


def completion_line(cid: str, prompt, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/completions",
            "body": {"prompt": prompt, "temperature": 0, "max_tokens": 6, **body}}


# custom_id (None: the line has none) -> expected error kind, for the bad lines of mixed.jsonl
BAD = {
    "two-choices": "unsupported_request",
    "embed": "unsupported_request",
    "hot": "invalid_request",
    "comp-text": "duplicate_id",  # an earlier line of the file has it
    "huge": "too_long",
    None: "malformed_record",
}


@pytest.fixture(scope="module")
def batch_files(tiny_model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("oai")
    with open(d / "chat.jsonl", "w", encoding="utf-8") as f:
        for i in range(N_CHAT):
            # vLLM's server answers only its own model's name; ours takes any (one model per job)
            f.write(json.dumps(chat_line(i, str(tiny_model))) + "\n")
    lines = [
        completion_line("comp-text", "Once upon a time"),
        completion_line("comp-ids", [5, 6, 7, 8], add_special_tokens=False),
        '{"custom_id": "cut", "method": "POST", ',
        {**chat_line(1), "custom_id": "two-choices", "body": {**chat_line(1)["body"], "n": 2}},
        {"custom_id": "embed", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}},
        {**chat_line(2), "custom_id": "hot", "body": {**chat_line(2)["body"], "temperature": "hot"}},
        completion_line("comp-text", "Once upon a time, again"),
        completion_line("huge", " ".join(f"w{i}" for i in range(MAX_MODEL_LEN * 2))),
    ]
    with open(d / "mixed.jsonl", "w", encoding="utf-8") as f:
        for x in lines:
            f.write((x if isinstance(x, str) else json.dumps(x)) + "\n")
    return d


@pytest.fixture(scope="module")
def ours(batch_files, tiny_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out") / "oai"
    args = ["run", "--input", str(batch_files / "chat.jsonl"), str(batch_files / "mixed.jsonl"),
            "--format", "openai_batch", "--output", str(out), "--model", str(tiny_model), *ENGINE_FLAGS,
            "--rows-per-unit", "4"]
    first = run_cli(*args, env={"PYTHONUNBUFFERED": "1"})
    results = (out / "openai" / "results.jsonl").read_bytes()
    second = run_cli(*args, env={"PYTHONUNBUFFERED": "1"})
    return {"out": out, "first": first.stdout, "second": second.stdout, "results_bytes": results}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_line_answered_once_in_openai_format(ours) -> None:
    out = ours["out"]
    results, errors = lines(out / "openai" / "results.jsonl"), lines(out / "openai" / "errors.jsonl")
    ok_ids = [r["custom_id"] for r in results]
    assert ok_ids == [f"chat-{i}" for i in range(N_CHAT)] + ["comp-text", "comp-ids"]  # input order
    for r in results:
        assert r["error"] is None and r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == ("text_completion" if r["custom_id"].startswith("comp") else "chat.completion")
        choice = body["choices"][0]
        assert choice["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] <= (6 if r["custom_id"].startswith("comp") else 8)
    assert lines(out / "openai" / "results.jsonl")[-1]["response"]["body"]["usage"]["prompt_tokens"] == 4  # the ids as given
    got = {e["custom_id"]: e["error"]["code"] for e in errors}
    assert got == BAD
    for e in errors:
        assert e["response"]["status_code"] == 400 and e["error"]["message"]
    # The same rows in the chat dataset and the errors dataset (Parquet), once each.
    assert read_dataset(str(out), "chat").num_rows == len(results)
    assert "OpenAI batch output: " in ours["first"] and f"results.jsonl ({len(results)} lines)" in ours["first"]


def test_a_rerun_computes_nothing_and_keeps_the_files(ours) -> None:
    assert "(already up to date)" in ours["second"]
    assert (ours["out"] / "openai" / "results.jsonl").read_bytes() == ours["results_bytes"]
    assert "up-to-date" in ours["second"] and "computed now: 0" in ours["second"]


def test_same_answers_as_vllm_run_batch(ours, batch_files, tiny_model, tmp_path) -> None:
    """vLLM's own batch runner over chat.jsonl, with our engine's settings, greedy: the same
    text, finish reason and token counts for every custom_id."""
    theirs_path = tmp_path / "vllm-out.jsonl"
    cmd = [sys.executable, "-W", "ignore", "-m", "vllm.entrypoints.openai.run_batch",
           "-i", str(batch_files / "chat.jsonl"), "-o", str(theirs_path), "--model", str(tiny_model), *ENGINE_FLAGS,
           "--enforce-eager", "--seed", "0", "--block-size", "32", "--kv-cache-memory-bytes", str(1 << 30),
           "--generation-config", "vllm"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0"})
    assert p.returncode == 0, p.stderr[-5000:]
    theirs = {r["custom_id"]: r for r in lines(theirs_path)}
    mine = {r["custom_id"]: r for r in lines(ours["out"] / "openai" / "results.jsonl") if r["custom_id"].startswith("chat")}
    assert set(theirs) == set(mine) and len(mine) == N_CHAT
    for cid, r in mine.items():
        a, b = r["response"]["body"], theirs[cid]["response"]["body"]
        assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"], cid
        assert a["choices"][0]["finish_reason"] == b["choices"][0]["finish_reason"], cid
        assert a["usage"] == {k: b["usage"][k] for k in a["usage"]}, cid


def test_killed_run_resumes_with_every_line_once(tiny_model, tmp_path) -> None:
    # The tiny model answers 400 of these lines in about 3 s here (CI once finished them all
    # between two looks at the commits): the kill comes at 100 lines, with ~1,100 to go.
    n = 1200
    path = tmp_path / "many.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            # ignore_eos: every answer takes its 32 tokens, so the run lasts long enough to be killed
            f.write(json.dumps({**chat_line(i), "custom_id": f"m-{i}",
                                "body": {**chat_line(i)["body"], "max_tokens": 32, "ignore_eos": True}}) + "\n")
    out = tmp_path / "out"
    args = ["run", "--input", str(path), "--format", "openai_batch", "--output", str(out), "--model", str(tiny_model),
            *ENGINE_FLAGS, "--rows-per-unit", "8", "--batch-rows", "8"]
    proc = start_cli(*args, log=tmp_path / "run1.log")
    try:
        wait_for(lambda: committed_rows(out) >= 100, 600, "100 lines committed", proc)
    finally:
        kill_group(proc)
    done = committed_rows(out)
    assert done < n, "the run finished before the kill: make the file longer"
    assert not (out / "openai").exists()  # nothing exported before a publish

    run_cli(*args)
    s = json.loads((out / "summary.json").read_text())
    assert s["rows_resumed"] == done and s["rows_computed"] == n - done
    results = lines(out / "openai" / "results.jsonl")
    assert [r["custom_id"] for r in results] == [f"m-{i}" for i in range(n)]  # each once, in input order
    assert lines(out / "openai" / "errors.jsonl") == []
