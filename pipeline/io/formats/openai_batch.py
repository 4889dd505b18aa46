"""OpenAI Batch files: one request per line, as OpenAI's Batch API, other hosted batch APIs
and `vllm run-batch` take them, and the results and errors written back in the same format.

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [...], ...}}

Reading (`input.format: openai_batch`): every line becomes one row whose id is its
`custom_id` and whose text is its request (`{"url": ..., "body": ...}` as JSON); the `chat`
task turns that into a request to the engine (pipeline/tasks/chat.py), for
/v1/chat/completions and /v1/completions. The envelope is checked here and the body there,
because the task is what knows what a request may ask (and the online endpoint gets bodies
without envelopes). A line that is not a request we serve becomes one error row, never a
crash (`vllm run-batch` stops at the first line it cannot parse):

    bad JSON, not an object, custom_id not a string      malformed_record
    custom_id, method, url or body missing               missing_field
    method other than POST, body not an object           invalid_request
    another url (/v1/embeddings, /v1/responses, ...)     unsupported_request
    a custom_id an earlier line of the file has          duplicate_id

custom_ids must be unique in a file (OpenAI refuses a batch whose ids repeat): the first
line keeps its id's result, a later one becomes a duplicate_id error. Every line is parsed
for its id, also in the units a resumed run skips, so which line is the duplicate never
depends on where an earlier attempt stopped. Positions are line numbers, as for JSON Lines.

Writing (`pipeline export OUT --format openai-batch`): `result_line` and `error_line` give
one line of OpenAI's batch output for one row of the chat dataset or of the errors dataset.
Their ids are derived from the run and the line, so a second export writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Iterator, Optional

import pyarrow as pa

from pipeline.config import InputConfig
from pipeline.errors import ErrorKind
from pipeline.io.formats import Cursor
from pipeline.io.formats.fields import INVALID_UTF8, MALFORMED, MISSING, a, clean, fields_list, json_type, utf8_ok
from pipeline.io.formats.lines import invalid_utf8, json_object, read_lines, salvage_id
from pipeline.io.sources import SourceFile
from pipeline.io.units import Row, UnitBuilder
from pipeline.tasks.chat import request_text
from pipeline.tasks.openai_request import COMPLETIONS_URL, URLS

ID_FIELD = "custom_id"

_DUPLICATE = ErrorKind.DUPLICATE_ID.value
_INVALID = ErrorKind.INVALID_REQUEST.value
_UNSUPPORTED = ErrorKind.UNSUPPORTED_REQUEST.value
_INVALID_TEXT = ErrorKind.INVALID_TEXT.value
_MISSING = object()


def read(stream: Any, src: SourceFile, cfg: InputConfig, units: UnitBuilder, tell: Callable[[], int],
         cursor: Cursor) -> Iterator[pa.Table]:
    uri = src.uri
    seen: dict[str, int] = {}  # custom_id -> the position that has it first
    # The lines of skipped units are read for their ids too (which line is a duplicate).
    return read_lines(stream, units, tell, cursor, lambda line, pos: _row(line, pos, uri, seen, True),
                      skipped=lambda line, pos: _row(line, pos, uri, seen, False))


def _row(line: str, pos: int, uri: str, seen: dict[str, int], keep: bool) -> Optional[Row]:
    """The row of one line. With `keep` false (a skipped unit) only its id matters: it is
    registered, and the row may be None."""
    where = f"line {pos + 1}: "
    fallback = f"{uri}#{pos}"
    bad = invalid_utf8(line)
    if bad is not None:
        cid = salvage_id(bad[0], ID_FIELD, json.loads)
        if cid is not None and seen.setdefault(cid, pos) != pos:
            cid = None  # the id belongs to an earlier line: this error must not take it
        return (cid or fallback, pos, None, INVALID_UTF8, f"{where}{bad[1]}")
    obj, why = json_object(line, where, "a JSON object (a batch request)")
    if why is not None:
        return (fallback, pos, None, MALFORMED, why)

    cid = obj.get(ID_FIELD, _MISSING)
    if cid is _MISSING:
        return (fallback, pos, None, MISSING, f"{where}field 'custom_id' missing; fields present: {fields_list(obj)}")
    if type(cid) is not str:
        return (fallback, pos, None, MALFORMED, f"{where}custom_id is {a(json_type(cid))}; OpenAI batch files give it as a string")
    if not cid.strip():
        return (fallback, pos, None, MISSING, f"{where}custom_id is empty")
    if not utf8_ok(cid):
        return (fallback, pos, None, MALFORMED, f"{where}custom_id is not valid Unicode")
    first = seen.setdefault(cid, pos)
    if first != pos:
        return (cid, pos, None, _DUPLICATE, clean(f"{where}custom_id {cid!r} was already used on line {first + 1}"))
    if not keep:
        return None

    method = obj.get("method", _MISSING)
    url = obj.get("url", _MISSING)
    body = obj.get("body", _MISSING)
    for name, value in (("method", method), ("url", url), ("body", body)):
        if value is _MISSING:
            return (cid, pos, None, MISSING, f"{where}field '{name}' missing; fields present: {fields_list(obj)}")
    if method != "POST":
        return (cid, pos, None, _INVALID, clean(f"{where}method {method!r}: batch requests are POST"))
    if url not in URLS:
        return (cid, pos, None, _UNSUPPORTED,
                clean(f"{where}url {url!r} is not served here; only {' and '.join(URLS)} (the chat task)"))
    if type(body) is not dict:
        return (cid, pos, None, _INVALID, f"{where}body is {a(json_type(body))}; expected the request object")
    text = request_text(url, body)
    if not utf8_ok(text):
        return (cid, pos, None, _INVALID_TEXT, f"{where}the body holds a lone surrogate (not valid Unicode)")
    return (cid, pos, text, None, None)


# -- output -----------------------------------------------------------------------------
# Errors the server side made (the request itself was fine): 500, as an HTTP API would say.
_SERVER_ERRORS = frozenset(
    k.value
    for k in (ErrorKind.GENERATION_ERROR, ErrorKind.INVALID_OUTPUT, ErrorKind.TRUNCATED_OUTPUT, ErrorKind.READ_ERROR,
              ErrorKind.TIMEOUT)
)


def _ids(run_id: str, source: str, position: int) -> str:
    """Stable per line and run: the same export twice gives the same file."""
    return hashlib.sha256(f"{run_id}\n{source}\n{position}".encode("utf-8", "surrogateescape")).hexdigest()[:24]


def custom_id(row: dict[str, Any]) -> Optional[str]:
    """The line's custom_id; None for a line that had none (its row id is '<source>#<position>')."""
    rid = row["row_id"]
    return None if rid == f"{row['source']}#{row['position']}" else rid


def result_line(row: dict[str, Any]) -> dict[str, Any]:
    """One line of results.jsonl from a row of the chat dataset: the object the request
    would have had from its endpoint (chat.completion, or text_completion for /v1/completions)."""
    h = _ids(row["run_id"], row["source"], row["position"])
    usage = {
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["output_tokens"],
        "total_tokens": row["prompt_tokens"] + row["output_tokens"],
    }
    if row.get("url") == COMPLETIONS_URL:
        kind, choice = "text_completion", {"text": row["output_text"]}
        rid = f"cmpl-{h}"
    else:
        kind, choice = "chat.completion", {"message": {"role": "assistant", "content": row["output_text"]}}
        rid = f"chatcmpl-{h}"
    body = {
        "id": rid,
        "object": kind,
        "created": row["created"],
        "model": row["model"],
        "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": row["finish_reason"]}],
        "usage": usage,
    }
    return {
        "id": f"batch_req_{h}",
        "custom_id": custom_id(row),
        "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
        "error": None,
    }


def error_line(row: dict[str, Any]) -> dict[str, Any]:
    """One line of errors.jsonl from a row of the errors dataset. Both ways readers look for
    a failure are filled: the HTTP answer the request would have had (`response`, with
    OpenAI's error body) and `error` ({code, message}, as vllm run-batch gives it)."""
    h = _ids(row["run_id"], row["source"], row["position"])
    kind, message = row["error_kind"], row["error_message"]
    server = kind in _SERVER_ERRORS
    error_body = {
        "message": message,
        "type": "server_error" if server else "invalid_request_error",
        "param": None,
        "code": kind,
    }
    return {
        "id": f"batch_req_{h}",
        "custom_id": custom_id(row),
        "response": {"status_code": 500 if server else 400, "request_id": f"req_{h}", "body": {"error": error_body}},
        "error": {"code": kind, "message": message},
    }
