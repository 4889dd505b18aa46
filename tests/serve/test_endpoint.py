"""The endpoint through real Ray Serve on loopback, a real vLLM engine on the tiny model,
API keys on. One `pipeline serve` for the module (its own local Ray cluster).

Each route with valid and invalid input, the OpenAI routes through the official `openai`
client (streaming included), auth, limits, a deadline (504) and a client that goes away
both aborting generations in the engine, admission past its bound, and last, a graceful
shutdown that lets an in-flight request finish.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import httpx
import pytest

from .server import serve_process, stop

pytestmark = pytest.mark.engine

KEY = "sk-test-" + "a1b2c3d4" * 4
# 1,500 tokens per text: seconds on the tiny model here (about 2.6 ms per decoding step),
# far longer than the deadlines and disconnects below.
LONG = {"sampling": {"max_tokens": 1500, "min_tokens": 1500, "ignore_eos": True}}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with serve_process(
        tmp_path_factory.mktemp("serve-endpoint"),
        str(tiny_model),
        key=KEY,
        engine={"max_model_len": 2048},
        limits={"max_texts": 8, "max_chars": 4000, "max_tokens": 1536, "max_body_bytes": 65536, "request_timeout_s": 30},
        admission={"max_texts_in_flight": 16, "retry_after_s": 2},
        health={"drain_timeout_s": 30},
    ) as s:
        yield s


def post(server, path, body, **kw):
    with server.client() as c:
        return c.post(path, json=body, **kw)


def check_error(r, status, kind):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["kind"] == kind and err["message"]
    return err


# -- task routes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "route, params, columns",
    [
        ("sentiment", {"labels": ["good", "bad"]}, {"label", "score"}),
        ("summarize", {"max_words": 12}, {"max_words"}),
        ("translate", {"target_lang": "French", "source_lang": "English"}, {"source_lang", "target_lang"}),
    ],
)
def test_task_route_valid_input(server, route, params, columns):
    texts = ["The film was long but the ending was lovely.", "Prices rose by 3.5% in 2024."]
    sampling = {} if route == "sentiment" else {"sampling": {"max_tokens": 8}}
    r = post(server, f"/v1/{route}", {"texts": texts, **params, **sampling})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    for res in results:
        assert columns <= set(res) and res["model"] == server.model
        assert res["prompt_tokens"] > 0 and res["finish_reason"] in ("stop", "length")
    if route == "sentiment":
        assert {res["label"] for res in results} <= {"good", "bad"} and all(0 < res["score"] <= 1 for res in results)
    if route == "translate":
        # max_tokens bounds each answer: a text whose translation might not fit 8 tokens is
        # translated in parts (the long-document policy, `split`), each answer within 8.
        assert results[0]["target_lang"] == "French" and results[0]["parts"] >= 1
        assert results[0]["output_tokens"] <= 8 * results[0]["parts"]


@pytest.mark.parametrize(
    "route, body, status, kind",
    [
        ("sentiment", {"text": "x", "labels": ["one"]}, 422, "invalid_request"),
        ("sentiment", {"text": "x", "texts": ["y"]}, 422, "invalid_request"),
        ("summarize", {"text": "x", "max_words": 2}, 422, "invalid_request"),
        ("summarize", {"texts": ["x"] * 9}, 422, "invalid_request"),
        ("summarize", {"text": "x" * 4001}, 422, "invalid_request"),
        ("summarize", {"text": "x", "sampling": {"max_tokens": 1537}}, 422, "invalid_request"),
        ("translate", {"text": "Hello"}, 422, "invalid_request"),
        ("translate", {"text": "Hello", "target_lang": "fr", "colour": "red"}, 422, "invalid_request"),
    ],
)
def test_task_route_invalid_input(server, route, body, status, kind):
    check_error(post(server, f"/v1/{route}", body), status, kind)


def test_per_text_errors_do_not_fail_the_others(server):
    r = post(server, "/v1/sentiment", {"texts": ["fine", "", "nul\x00byte"]})
    kinds = [x.get("error", {}).get("kind") for x in r.json()["results"]]
    assert kinds == [None, "empty_text", "invalid_text"]


def test_body_limit_and_malformed_json(server):
    big = json.dumps({"text": "x" * 70_000}).encode()
    check_error(post(server, "/v1/summarize", None, content=big), 413, "payload_too_large")
    check_error(post(server, "/v1/summarize", None, content=b'{"text": ', headers={"content-type": "application/json"}), 422, "invalid_request")


def test_models_health_and_openapi(server):
    with server.client() as c:
        models = c.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == [server.model]
        ready = c.get("/health/ready").json()
        assert ready["status"] == "ready" and ready["engine"]["in_flight"] == 0
        doc = c.get("/openapi.json").json()
    assert {"/v1/sentiment", "/v1/summarize", "/v1/translate", "/v1/chat/completions", "/v1/completions"} <= set(doc["paths"])


def test_auth_guards_every_route_but_liveness(server):
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        assert anon.get("/health/live").status_code == 200
        for method, path in [("GET", "/v1/models"), ("GET", "/health/ready"), ("GET", "/openapi.json"), ("POST", "/v1/sentiment")]:
            r = anon.request(method, path, json={"text": "x"} if method == "POST" else None)
            check_error(r, 401, "unauthorized")
        r = anon.post("/v1/sentiment", json={"text": "x"}, headers={"Authorization": "Bearer sk-wrong"})
        check_error(r, 401, "unauthorized")
    assert KEY not in server.log.read_text(errors="replace")


# -- OpenAI-compatible routes through the official client -------------------------------------
@pytest.fixture(scope="module")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_openai_client_chat_and_completions(server, openai_client):
    (model,) = [m.id for m in openai_client.models.list()]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
    chat = openai_client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 5
    again = openai_client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == chat.choices[0].message.content  # greedy

    comp = openai_client.completions.create(model=model, prompt=["Once upon a time", "The weather"], max_tokens=6, temperature=0)
    assert [c.index for c in comp.choices] == [0, 1] and all(c.text for c in comp.choices)


def test_openai_client_streaming_matches_the_whole_answer(server, openai_client):
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    whole = openai_client.chat.completions.create(model=server.model, messages=messages, max_tokens=24, temperature=0)
    stream = openai_client.chat.completions.create(
        model=server.model, messages=messages, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one blob
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]

    comp = list(openai_client.completions.create(model=server.model, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in comp if c.choices)


def test_openai_client_sees_clear_errors(server, openai_client):
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="1536"):
        openai_client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="context"):
        openai_client.completions.create(model=server.model, prompt="\u00e9" * 1000, max_tokens=1000)
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# -- deadlines, disconnects, admission --------------------------------------------------------
def test_a_request_past_its_deadline_gets_504_and_its_generation_is_aborted(server):
    before = server.engine_state()["finished"]
    t0 = time.monotonic()
    # The client's deadline (1 s) is sooner than the server's (30 s): it applies.
    r = post(server, "/v1/summarize", {"texts": [f"text {i}" for i in range(8)], **LONG}, headers={"X-Request-Timeout": "1"})
    took = time.monotonic() - t0
    check_error(r, 504, "timeout")
    assert 1.0 <= took < 2.5
    state = server.wait_idle(timeout=5)
    assert state["in_flight"] == 0 and state["running"] == 0, state
    assert state["finished"] == before  # aborted, none ran to its end
    assert state["aborted"] >= 1


def test_a_client_that_disconnects_aborts_its_generation(server):
    # A non-streamed request whose client gives up after 1 s: the proxy cancels the
    # replica's handler, which aborts the engine requests (seconds from their end).
    before = server.engine_state()
    try:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=1.0) as c:
            c.post("/v1/summarize", json={"texts": ["a", "b", "c", "d"], **LONG})
    except httpx.TimeoutException:
        pass
    t_gone = time.monotonic()
    state = server.wait_idle(timeout=5)
    dropped_in = time.monotonic() - t_gone
    print(f"\nnon-streamed: engine idle {dropped_in:.2f}s after the client left")
    assert state["in_flight"] == 0 and state["admitted"] == 0, state
    assert state["aborted"] == before["aborted"] + 1 and state["finished"] == before["finished"]  # aborted, not run to its end
    assert dropped_in < 1.5

    # A stream read for a few events, then closed.
    body = {"model": server.model, "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 1500, "min_tokens": 1500, "stream": True}
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    t_gone = time.monotonic()
    state = server.wait_idle(timeout=5)
    dropped_in = time.monotonic() - t_gone
    print(f"streamed: engine idle {dropped_in:.2f}s after the client left")
    assert state["in_flight"] == 0 and state["admitted"] == 0, state
    assert state["aborted"] == before["aborted"] + 2 and state["finished"] == before["finished"] and dropped_in < 1.5


def test_past_admission_requests_get_503_with_retry_after_at_once(server):
    server.wait_idle()  # an earlier test's aborted requests may still hold admission slots

    async def go():
        async with server.async_client() as c:
            # Answers long enough (seconds) that the bound is still full when the extra request
            # comes, even on a loaded machine: 150 tokens were done before it at times.
            body = {"texts": [f"t{i}" for i in range(8)], "sampling": {"max_tokens": 500, "min_tokens": 500, "ignore_eos": True}}
            first = [asyncio.ensure_future(c.post("/v1/summarize", json=body)) for _ in range(2)]  # 16 texts: the bound
            deadline = time.monotonic() + 60
            while (await c.get("/health/ready")).json()["engine"]["admitted"] < 16:
                done = [f.result() for f in first if f.done()]
                assert time.monotonic() < deadline and not done, (
                    "the 16 texts were never in flight at once", [(r.status_code, r.text[:300]) for r in done])
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            extra = await c.post("/v1/sentiment", json={"text": "one more"})
            waited = time.monotonic() - t0
            return [await f for f in first], extra, waited

    first, extra, waited = asyncio.run(go())
    assert all(r.status_code == 200 for r in first), [r.text for r in first]
    check_error(extra, 503, "overloaded")
    assert extra.headers["retry-after"] == "2" and waited < 1.0
    assert server.wait_idle()["admitted"] == 0


# -- last: graceful shutdown --------------------------------------------------------------------
def test_graceful_shutdown_lets_in_flight_requests_finish(server):
    result = {}

    def long_request():
        with server.client(timeout=60) as c:
            body = {"texts": [f"t{i}" for i in range(4)], "sampling": {"max_tokens": 1000, "min_tokens": 1000, "ignore_eos": True}}
            result["r"] = c.post("/v1/summarize", json=body)

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.5)  # admitted within milliseconds; about 2.6 s from its end
    server.proc.send_signal(signal.SIGTERM)
    t.join(timeout=60)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert [x["output_tokens"] for x in r.json()["results"]] == [1000] * 4
    # The drained server exits by itself; stop() would send a second SIGTERM, which (as a
    # second Ctrl-C) exits at once: wait for the first one's clean end.
    try:
        code = server.proc.wait(timeout=120)
    finally:
        stop(server)
    assert code == 0, server.log.read_text()[-3000:]
    assert "draining in-flight requests" in server.log.read_text()
