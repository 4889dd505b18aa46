"""Lines of OpenAI batch output files, checked against vLLM's own model of them
(`BatchRequestOutput`, what `vllm run-batch` writes) and OpenAI's response objects."""

from __future__ import annotations

import json

from pipeline.io.formats.openai_batch import error_line, result_line


def row(**kw):
    base = {"row_id": "req-1", "source": "/d/batch.jsonl", "position": 0, "run_id": "r1", "model": "tiny",
            "output_text": "Bonjour", "prompt_tokens": 11, "output_tokens": 3, "finish_reason": "stop",
            "created": 1_700_000_000, "url": "/v1/chat/completions"}
    return {**base, **kw}


def test_result_lines_parse_as_vllm_batch_output() -> None:
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    chat = result_line(row())
    out = BatchRequestOutput.model_validate_json(json.dumps(chat))
    assert out.custom_id == "req-1" and out.error is None and out.response.status_code == 200
    body = out.response.body
    assert (body.object, body.choices[0].message.content, body.usage.total_tokens) == ("chat.completion", "Bonjour", 14)
    assert result_line(row()) == chat  # the same row, the same line: an export twice writes the same bytes

    comp = result_line(row(url="/v1/completions", position=1))["response"]["body"]
    assert comp["object"] == "text_completion" and comp["choices"][0]["text"] == "Bonjour"
    assert comp["id"].startswith("cmpl-") and comp["id"] != chat["response"]["body"]["id"]
    from vllm.entrypoints.openai.completion.protocol import CompletionResponse

    CompletionResponse.model_validate(comp)


def test_error_lines_say_kind_and_who_failed() -> None:
    from vllm.entrypoints.launchers.run_batch import BatchRequestOutput

    bad = error_line(row(error_kind="unsupported_request", error_message="body.n=2: one choice per request"))
    assert bad["response"]["status_code"] == 400
    assert bad["error"] == {"code": "unsupported_request", "message": "body.n=2: one choice per request"}
    assert bad["response"]["body"]["error"]["type"] == "invalid_request_error"
    ours = error_line(row(error_kind="generation_error", error_message="boom"))
    assert ours["response"]["status_code"] == 500 and ours["response"]["body"]["error"]["type"] == "server_error"
    # A line without a custom_id (its row id is '<source>#<position>') has none in the output either.
    anon = error_line(row(row_id="/d/batch.jsonl#4", position=4, error_kind="malformed_record", error_message="x"))
    assert anon["custom_id"] is None
    BatchRequestOutput.model_validate({**bad, "response": {**bad["response"], "body": None}})
