"""The endpoint's HTTP logic on a fake engine (tests/serve/fake.py): validation, limits,
admission, deadlines, auth, error answers, the OpenAI routes' shapes, the OpenAPI
document. Fast; the same app runs behind real Ray Serve on a real engine in
test_endpoint.py and test_resilience.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from pipeline.config import ServeConfig
from pipeline.errors import UsageError
from pipeline.serve.app import create_app
from pipeline.serve.auth import key_matches, load_keys
from pipeline.serve.health import EngineUnhealthy
from pipeline.serve.service import Service
from pipeline.config import SERVED_TASKS
from pipeline.tasks import TASKS

from .fake import FakeEngine

KEY = "test-key-0123456789"

LIMITS = {"max_texts": 4, "max_chars": 200, "max_tokens": 32, "max_body_bytes": 2048, "request_timeout_s": 5}


def make(tokenizer, delay=0.0, digests=(), **cfg):
    cfg.setdefault("limits", LIMITS)
    cfg.setdefault("admission", {"max_texts_in_flight": 4})
    cfg.setdefault("engine", {"max_model_len": 256})
    engine = FakeEngine(tokenizer, delay)
    service = Service(ServeConfig.model_validate(cfg), engine, "tiny-llama", digests)
    return service, create_app(service)


def client(app, key=None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers)


def run(coro):
    return asyncio.run(coro)


async def post(app, path, body, key=None, **kw):
    async with client(app, key) as c:
        return await c.post(path, json=body, **kw)


def error_of(r: httpx.Response, status: int, kind: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["kind"] == kind and err["message"], err
    return err


# -- task routes ----------------------------------------------------------------------------
def test_routes_come_from_the_task_registry(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    paths = set(app.openapi()["paths"])
    assert {f"/v1/{cls.route}" for cls in SERVED_TASKS.values()} <= paths
    _, only = make(tiny_tokenizer, tasks={"sentiment": {}})
    assert "/v1/summarize" not in only.openapi()["paths"] and "/v1/sentiment" in only.openapi()["paths"]


def test_a_result_has_the_batch_columns(tiny_tokenizer):
    service, app = make(tiny_tokenizer)
    r = run(post(app, "/v1/sentiment", {"text": "A fine film."}))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    batch_cols = set(TASKS["sentiment"].schema().names) - {"row_id", "source", "position", "run_id", "task"}
    assert set(res) == batch_cols
    assert res["label"] == "positive" and res["model"] == "tiny-llama" and res["score"] == pytest.approx(0.75)
    assert res["prompt_tokens"] == len(service.engine.prompts[0]) and res["output_tokens"] == 1


def test_each_route_runs_its_own_task_whatever_was_asked_before(tiny_tokenizer):
    # Tasks with no request parameters once shared one cached task: /v1/summarize after
    # /v1/sentiment answered with a sentiment label (and failed its response model).
    _, app = make(tiny_tokenizer)
    for path, task, extra in (("/v1/sentiment", "sentiment", {}), ("/v1/summarize", "summarization", {}),
                              ("/v1/translate", "translation", {"target_lang": "French"})):
        r = run(post(app, path, {"text": "The council voted to build a library.", **extra}))
        assert r.status_code == 200, (path, r.text)
        (res,) = r.json()["results"]
        batch_cols = set(TASKS[task].schema().names) - {"row_id", "source", "position", "run_id", "task"}
        assert set(res) == batch_cols, path


def test_several_texts_answer_in_order_with_per_text_errors(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    r = run(post(app, "/v1/summarize", {"texts": ["one text", "", "bad\x00text", "   "], "max_words": 10}))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[0]["output_text"] and res[0]["max_words"] == 10
    assert [x.get("error", {}).get("kind") for x in res] == [None, "empty_text", "invalid_text", "empty_text"]


def test_task_parameters_are_validated_by_the_tasks_model(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    err = error_of(run(post(app, "/v1/translate", {"text": "Hello"})), 422, "invalid_request")
    assert err["param"] == "target_lang"
    ok = run(post(app, "/v1/translate", {"text": "Hello", "target_lang": "French"}))
    assert ok.json()["results"][0]["target_lang"] == "French"
    error_of(run(post(app, "/v1/sentiment", {"text": "x", "labels": ["only"]})), 422, "invalid_request")
    err = error_of(run(post(app, "/v1/sentiment", {"text": "x", "lables": ["a", "b"]})), 422, "invalid_request")
    assert "lables" in err["message"]
    error_of(run(post(app, "/v1/sentiment", {"text": "x", "texts": ["y"]})), 422, "invalid_request")
    error_of(run(post(app, "/v1/sentiment", {})), 422, "invalid_request")


def test_server_defaults_apply_and_requests_override_them(tiny_tokenizer):
    _, app = make(tiny_tokenizer, tasks={"translation": {"target_lang": "German"}})
    r = run(post(app, "/v1/translate", {"text": "Hello"}))
    assert r.json()["results"][0]["target_lang"] == "German"
    r = run(post(app, "/v1/translate", {"text": "Hello", "target_lang": "Dutch"}))
    assert r.json()["results"][0]["target_lang"] == "Dutch"


def test_limits_answer_4xx(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    error_of(run(post(app, "/v1/sentiment", {"texts": ["a"] * 5})), 422, "invalid_request")
    error_of(run(post(app, "/v1/sentiment", {"text": "a" * 201})), 422, "invalid_request")
    err = error_of(run(post(app, "/v1/summarize", {"text": "a", "sampling": {"max_tokens": 33}})), 422, "invalid_request")
    assert "32" in err["message"]
    # A default above the cap (1000 words -> 1516 tokens) is lowered to it, not refused.
    r = run(post(app, "/v1/summarize", {"text": "a", "max_words": 1000}))
    assert r.status_code == 200 and r.json()["results"][0]["output_tokens"] <= 32


def test_body_size_limit_is_413_with_or_without_content_length(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    big = json.dumps({"text": "a" * 4000}).encode()
    error_of(run(post(app, "/v1/sentiment", None, content=big)), 413, "payload_too_large")

    async def chunked():
        async def gen():
            for i in range(0, len(big), 500):
                yield big[i : i + 500]

        async with client(app) as c:
            return await c.post("/v1/sentiment", content=gen())

    error_of(run(chunked()), 413, "payload_too_large")


def test_malformed_json_and_unknown_routes(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    error_of(run(post(app, "/v1/sentiment", None, content=b"{not json", headers={"content-type": "application/json"})), 422, "invalid_request")
    error_of(run(post(app, "/v1/nothing", {"text": "x"})), 404, "not_found")


# -- admission, deadlines, engine trouble ----------------------------------------------------
def test_past_the_admission_bound_is_an_immediate_503_with_retry_after(tiny_tokenizer):
    service, app = make(tiny_tokenizer, delay=0.5)

    async def go():
        async with client(app) as c:
            first = asyncio.ensure_future(c.post("/v1/sentiment", json={"texts": ["a", "b", "c"]}))
            await asyncio.sleep(0.1)  # the first request's 3 texts are in
            t0 = asyncio.get_running_loop().time()
            second = await c.post("/v1/sentiment", json={"texts": ["d", "e"]})
            waited = asyncio.get_running_loop().time() - t0
            return await first, second, waited

    first, second, waited = run(go())
    assert first.status_code == 200
    error_of(second, 503, "overloaded")
    assert second.headers["retry-after"] == "1" and waited < 0.4  # at once, not after the first finished
    assert service.admission.admitted == 0 and service.engine.in_flight == 0


def test_reject_status_429(tiny_tokenizer):
    _, app = make(tiny_tokenizer, delay=0.3, admission={"max_texts_in_flight": 4, "reject_status": 429, "retry_after_s": 2})

    async def go():
        async with client(app) as c:
            return await asyncio.gather(*(c.post("/v1/sentiment", json={"texts": ["a", "b", "c"]}) for _ in range(3)))

    codes = sorted(r.status_code for r in run(go()))
    assert codes == [200, 429, 429]


def test_timeout_is_504_and_aborts_the_generation(tiny_tokenizer):
    service, app = make(tiny_tokenizer, delay=5, limits={**LIMITS, "request_timeout_s": 0.3})
    r = run(post(app, "/v1/summarize", {"texts": ["a", "b"]}))
    error_of(r, 504, "timeout")
    assert service.engine.cancelled == 2 and service.engine.in_flight == 0 and service.admission.admitted == 0
    assert service.aborted == 1


def test_a_dead_engine_answers_503_and_fails_the_health_check(tiny_tokenizer):
    service, app = make(tiny_tokenizer)
    service.engine.dead = True
    err = error_of(run(post(app, "/v1/sentiment", {"text": "x"})), 503, "unavailable")
    assert "replaced" in err["message"]

    async def ready():
        async with client(app) as c:
            return await c.get("/health/ready"), await c.get("/health/live")

    r, live = run(ready())
    error_of(r, 503, "unavailable")
    assert r.headers["retry-after"] == "1" and live.status_code == 200
    with pytest.raises(EngineUnhealthy, match="died"):
        service.health.check()


def test_a_stuck_engine_fails_the_health_check(tiny_tokenizer):
    service, _ = make(tiny_tokenizer, health={"stall_timeout_s": 0.2})
    service.health.check()
    service.engine.in_flight = 3  # requests in flight, no token computed since
    service.health.check()

    time.sleep(0.3)
    with pytest.raises(EngineUnhealthy, match="no token"):
        service.health.check()


# -- auth ---------------------------------------------------------------------------------
def test_auth_on_every_route_but_liveness(tiny_tokenizer, monkeypatch, caplog):
    monkeypatch.setenv("PIPELINE_TEST_KEYS", f"other-key, {KEY}")
    digests = load_keys(ServeConfig.model_validate({"auth": {"api_keys_env": "PIPELINE_TEST_KEYS"}}).auth)
    _, app = make(tiny_tokenizer, digests=digests)
    caplog.set_level(logging.DEBUG)

    async def go(key):
        async with client(app, key) as c:
            return [
                await c.post("/v1/sentiment", json={"text": "x"}),
                await c.get("/v1/models"),
                await c.get("/health/ready"),
                await c.get("/openapi.json"),
                await c.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}),
                await c.get("/health/live"),
            ]

    for key in (None, "wrong-key"):
        *closed, live = run(go(key))
        for r in closed:
            error_of(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        assert live.status_code == 200
    assert all(r.status_code == 200 for r in run(go(KEY)))
    assert KEY not in caplog.text


def test_keys_from_a_file_and_missing_sources(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text(f"# service A\n{KEY}\n\n  second-key  \n")
    digests = load_keys(ServeConfig.model_validate({"auth": {"api_keys_file": str(f)}}).auth)
    assert len(digests) == 2 and key_matches("second-key", digests) and not key_matches("second", digests)
    assert load_keys(ServeConfig().auth) == ()
    with pytest.raises(UsageError, match="cannot read"):
        load_keys(ServeConfig.model_validate({"auth": {"api_keys_file": str(tmp_path / "none")}}).auth)
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(UsageError, match="holds no key"):
        load_keys(ServeConfig.model_validate({"auth": {"api_keys_file": str(tmp_path / "empty")}}).auth)
    monkeypatch.delenv("PIPELINE_NO_SUCH_VAR", raising=False)
    with pytest.raises(UsageError, match="PIPELINE_NO_SUCH_VAR"):
        load_keys(ServeConfig.model_validate({"auth": {"api_keys_env": "PIPELINE_NO_SUCH_VAR"}}).auth)


# -- OpenAI-compatible routes -----------------------------------------------------------------
CHAT = {"model": "tiny-llama", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]}


def test_chat_completion_shape_and_prompt_through_the_chat_template(tiny_tokenizer):
    service, app = make(tiny_tokenizer)
    r = run(post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 4, "temperature": 0}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-llama"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "word word word word"}
    assert body["usage"] == {"prompt_tokens": len(service.engine.prompts[0]), "completion_tokens": 4, "total_tokens": len(service.engine.prompts[0]) + 4}
    expected = tiny_tokenizer.apply_chat_template(CHAT["messages"], add_generation_prompt=True, tokenize=False)
    assert tiny_tokenizer.decode(service.engine.prompts[0]) == expected


def test_a_body_means_the_same_online_and_on_a_batch_line(tiny_tokenizer):
    """One parser behind both (pipeline/tasks/openai_request.py): the same chat body gives
    the same prompt tokens and sampling parameters as the batch chat task's request line."""
    from pipeline.config import TasksConfig
    from pipeline.tasks import build_tasks
    from pipeline.tasks.chat import CHAT_URL, request_text
    from pipeline.tasks.prompting import render_tokens

    service, app = make(tiny_tokenizer)
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]
    body = {**CHAT, "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}],
            "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 7, "stop": ["x"], "presence_penalty": 0.5}
    assert run(post(app, "/v1/chat/completions", body)).status_code == 200
    line = build_tasks(TasksConfig(chat={}))[0].for_text(request_text(CHAT_URL, body))
    assert service.engine.prompts[0] == render_tokens(line, "", tiny_tokenizer, 256, "reject")[0]
    online, batch = service.engine.params[0], line.sampling_params()
    for name in ("max_tokens", "temperature", "top_p", "seed", "stop", "presence_penalty", "min_tokens", "ignore_eos"):
        assert getattr(online, name) == getattr(batch, name), name


def test_chat_stream_is_server_sent_events(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    r = run(post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "word word word"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_completions_with_several_prompts(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    r = run(post(app, "/v1/completions", {"model": "tiny-llama", "prompt": ["a b", "c d"], "max_tokens": 2}))
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0, 1] and r.json()["usage"]["completion_tokens"] == 4
    error_of(run(post(app, "/v1/completions", {"model": "tiny-llama", "prompt": ["a"] * 5})), 422, "invalid_request")
    error_of(run(post(app, "/v1/completions", {"model": "tiny-llama", "prompt": ["a", "b"], "stream": True})), 422, "invalid_request")


def test_openai_routes_refuse_clearly(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    err = error_of(run(post(app, "/v1/chat/completions", {**CHAT, "model": "gpt-4"})), 404, "not_found")
    assert "tiny-llama" in err["message"]
    error_of(run(post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 33})), 422, "invalid_request")
    error_of(run(post(app, "/v1/chat/completions", {**CHAT, "n": 2})), 422, "invalid_request")
    error_of(run(post(app, "/v1/chat/completions", {**CHAT, "tools": []})), 422, "invalid_request")
    error_of(run(post(app, "/v1/chat/completions", {**CHAT, "messages": []})), 422, "invalid_request")
    # 120 characters (under the 200 allowed) but 240 tokens: with 30 more, past the 256-token context.
    long = {"model": "tiny-llama", "prompt": "\u00e9" * 120, "max_tokens": 30}
    err = error_of(run(post(app, "/v1/completions", long)), 400, "too_long")
    assert "256" in err["message"]
    error_of(run(post(app, "/v1/completions", {"model": "tiny-llama", "prompt": ""})), 422, "invalid_request")
    lone_surrogate = b'{"model": "tiny-llama", "prompt": "bad \\ud800"}'  # valid JSON, not valid Unicode
    error_of(run(post(app, "/v1/completions", None, content=lone_surrogate, headers={"content-type": "application/json"})), 422, "invalid_request")
    r = run(post(app, "/v1/sentiment", None, content=b'{"texts": ["fine", "bad \\udfff"]}', headers={"content-type": "application/json"}))
    assert error_of(r, 422, "invalid_request")["param"] == "texts.1"


# -- the OpenAPI document ---------------------------------------------------------------------
def test_openapi_states_the_limits_and_the_error_shape(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    doc = app.openapi()
    comps = doc["components"]["schemas"]
    req = comps["SentimentRequest"]["properties"]
    texts = req["texts"]
    assert texts["maxItems"] == 4 and texts["items"]["maxLength"] == 200
    assert comps["SentimentRequest"]["oneOf"] == [{"required": ["text"]}, {"required": ["texts"]}]
    assert "target_lang" in comps["TranslationRequest"]["required"]  # the task needs it and the server has no default
    chat = comps["ChatCompletionRequest"]["properties"]
    assert chat["model"]["enum"] == ["tiny-llama"]
    assert next(b for b in chat["max_tokens"]["anyOf"] if b.get("type") == "integer")["maximum"] == 32
    assert "labels" in req and "target_lang" in comps["TranslationRequest"]["properties"]
    assert set(comps["SentimentResult"]["required"]) >= {"label", "score", "output_text", "model"}
    post_op = doc["paths"]["/v1/sentiment"]["post"]["responses"]
    for code in ("401", "413", "422", "503", "504"):
        assert post_op[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse"), code
    assert "Retry-After" in post_op["503"]["headers"]
    assert "HTTPValidationError" not in comps


def test_sampling_parameters_vllm_refuses_are_422(tiny_tokenizer):
    _, app = make(tiny_tokenizer)
    error_of(run(post(app, "/v1/summarize", {"text": "a", "sampling": {"max_tokens": 4, "min_tokens": 8}})), 422, "invalid_request")
    error_of(run(post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 4, "min_tokens": 8})), 422, "invalid_request")
    ok = run(post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 4, "min_tokens": 4, "ignore_eos": True}))
    assert ok.status_code == 200


def _events(r: httpx.Response) -> list:
    return [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]


def test_a_stream_past_its_deadline_ends_with_an_error_event_and_is_aborted(tiny_tokenizer):
    # 6 words, 0.2 s each: the first arrives in time (200 is sent), the deadline passes after.
    service, app = make(tiny_tokenizer, delay=0.2, limits={**LIMITS, "request_timeout_s": 0.5})
    r = run(post(app, "/v1/chat/completions", {**CHAT, "stream": True}))
    assert r.status_code == 200
    events = _events(r)
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "word"
    assert json.loads(events[-1])["error"]["kind"] == "timeout" and "[DONE]" not in events
    assert service.engine.cancelled == 1 and service.engine.in_flight == 0 and service.admission.admitted == 0


def test_a_stream_that_fails_before_its_first_token_gets_a_status(tiny_tokenizer):
    service, app = make(tiny_tokenizer, delay=1.0, limits={**LIMITS, "request_timeout_s": 0.3})
    error_of(run(post(app, "/v1/completions", {"model": "tiny-llama", "prompt": "x", "stream": True})), 504, "timeout")
    assert service.engine.in_flight == 0 and service.admission.admitted == 0


def test_an_engine_dying_mid_stream_ends_it_with_unavailable(tiny_tokenizer):
    service, app = make(tiny_tokenizer, delay=0.1)

    async def go():
        async with client(app) as c:
            task = asyncio.ensure_future(c.post("/v1/chat/completions", json={**CHAT, "stream": True}))
            await asyncio.sleep(0.25)
            service.engine.dead = True
            return await task

    r = run(go())
    assert r.status_code == 200
    assert json.loads(_events(r)[-1])["error"]["kind"] == "unavailable"
    assert service.engine.in_flight == 0 and service.admission.admitted == 0


def test_a_request_the_engine_refuses_is_400_not_500(tiny_tokenizer):
    from vllm.exceptions import VLLMValidationError

    service, app = make(tiny_tokenizer)

    async def refuse(prompt, params, request_id=None):
        raise VLLMValidationError("The decoder prompt cannot be empty")

    service.engine.agenerate = refuse
    err = error_of(run(post(app, "/v1/chat/completions", CHAT)), 400, "invalid_request")
    assert "cannot be empty" in err["message"]


def test_a_client_may_ask_for_a_sooner_deadline_never_a_later_one(tiny_tokenizer):
    service, app = make(tiny_tokenizer, delay=3.0, limits={**LIMITS, "request_timeout_s": 2})
    t0 = time.monotonic()
    error_of(run(post(app, "/v1/summarize", {"text": "a"}, headers={"X-Request-Timeout": "1"})), 504, "timeout")
    assert 1 <= time.monotonic() - t0 < 1.8
    t0 = time.monotonic()
    error_of(run(post(app, "/v1/chat/completions", CHAT, headers={"X-Request-Timeout": "30"})), 504, "timeout")
    assert 2 <= time.monotonic() - t0 < 2.8  # the server's 2 s, not the 30 asked for
    for bad in ("-1", "0.5", "soon"):
        error_of(run(post(app, "/v1/summarize", {"text": "a"}, headers={"X-Request-Timeout": bad})), 422, "invalid_request")
    assert service.engine.in_flight == 0


def test_a_stream_sends_its_first_text_at_once_then_coalesces(tiny_tokenizer):
    """Driven as raw ASGI to see each body message and when it was sent: the role chunk,
    then the first word as soon as it exists (the engine's first chunk had no text), then
    the rest in as few writes as the interval (1 s here) allows."""
    service, app = make(tiny_tokenizer, delay=0.1, http={"stream_interval_ms": 1000})
    service.engine.empty_first_chunk = True
    body = json.dumps({**CHAT, "max_tokens": 6, "stream": True}).encode()
    sent: list[tuple[float, bytes]] = []

    async def go():
        t0 = time.monotonic()
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                 "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("test", 1), "root_path": ""}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if messages:
                return messages.pop()
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(msg):
            if msg["type"] == "http.response.body" and msg.get("body"):
                sent.append((time.monotonic() - t0, msg["body"]))

        await app(scope, receive, send)

    run(go())
    texts = [[json.loads(e[6:]) for e in b.decode().split("\n\n") if e.startswith("data: {")] for _, b in sent]
    first_word = next(i for i, evs in enumerate(texts) if any(c["choices"] and c["choices"][0]["delta"].get("content") for c in evs))
    assert first_word <= 1 and sent[first_word][0] - sent[0][0] < 0.5  # 0.1 s after the role: not held for the 1 s interval
    assert len(sent) <= 4  # 8 chunks (role, empty, 6 words) and the end in at most 4 writes
    assert b"[DONE]" in sent[-1][1]
