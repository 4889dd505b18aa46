"""The endpoint through real Ray Serve on loopback, a real vLLM engine on the tiny model,
API keys on. One `pipeline serve` for the module (its own local Ray cluster).

Each route with valid and invalid input, the OpenAI routes through the official `openai`
client (streaming included), auth, limits, a deadline (504) and a client that goes away
both aborting generations in the engine, admission past its bound, and last, a graceful
shutdown that lets an in-flight request finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest

from tests.stalls import StallWatch

from .server import serve_process, stop

pytestmark = pytest.mark.engine

T = TypeVar("T")
KEY = "sk-test-" + "a1b2c3d4" * 4
# 4,000 tokens per text: seconds on the tiny model here (0.5 to 1 ms per decoding step for 4 to
# 8 texts on two cores, about 2 ms for 16), far longer than the deadlines and disconnects below.
# (At 1,500 tokens a request of 4 texts was done in about 1 s at times: as soon as the client
# that should have left by then.)
LONG = {"sampling": {"max_tokens": 4000, "min_tokens": 4000, "ignore_eos": True}}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with serve_process(
        tmp_path_factory.mktemp("serve-endpoint"),
        str(tiny_model),
        key=KEY,
        engine={"max_model_len": 4096},
        limits={"max_texts": 8, "max_chars": 4000, "max_tokens": 4000, "max_body_bytes": 65536, "request_timeout_s": 30},
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
        ("summarize", {"text": "x", "sampling": {"max_tokens": 4001}}, 422, "invalid_request"),
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
    with pytest.raises(openai.UnprocessableEntityError, match="4000"):
        openai_client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="context"):
        openai_client.completions.create(model=server.model, prompt="\u00e9" * 1600, max_tokens=1000)  # 3,200 + 1,000 tokens
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# -- deadlines, disconnects, admission --------------------------------------------------------
# Timings below leave out the machine's freezes (tests/stalls.py): seconds at a time, every
# process at once, several times a minute while an engine runs here.
def test_a_request_past_its_deadline_gets_504_and_its_generation_is_aborted(server):
    before = server.engine_state()["finished"]
    t0 = time.monotonic()
    with StallWatch() as stalls:
        # The client's deadline (1 s) is sooner than the server's (30 s): it applies.
        r = post(server, "/v1/summarize", {"texts": [f"text {i}" for i in range(8)], **LONG}, headers={"X-Request-Timeout": "1"})
        took = time.monotonic() - t0
    check_error(r, 504, "timeout")
    assert 1.0 <= took and took - stalls.stalled < 2.5, (took, stalls.stalled)
    state = server.wait_idle(timeout=5)
    assert state["in_flight"] == 0 and state["running"] == 0, state
    assert state["finished"] == before  # aborted, none ran to its end
    assert state["aborted"] >= 1


class NotInFlight(Exception):
    """Requests a test needed in flight were done before it saw them there: its set-up
    failed (the machine froze meanwhile), not the code under test."""


async def until_in_engine(c: httpx.AsyncClient, n: int, requests: list, timeout: float = 60) -> None:
    """Until n texts are admitted into the replica's engine, seen on /health/ready. A test that
    acts on requests in flight waits for this first: on a fast or a loaded machine, a fixed
    pause can end before they got there, or after they were done."""
    deadline = time.monotonic() + timeout
    while (await c.get("/health/ready")).json()["engine"]["admitted"] < n:
        done = [f.result() for f in requests if f.done() and not f.exception()]
        if done:
            raise NotInFlight([(r.status_code, r.text[:200]) for r in done])
        assert time.monotonic() < deadline, f"{n} texts were never in flight at once"
        await asyncio.sleep(0.02)


def set_up_again_if_not_in_flight(server, scenario: Callable[[], T], attempts: int = 3) -> T:
    """The scenario's result; run again (after the engine is idle) when its requests were done
    before they were seen in flight, up to `attempts` times."""
    for _ in range(attempts):
        try:
            return scenario()
        except NotInFlight as e:
            last = e
            server.wait_idle()
    pytest.fail(f"the requests were done before they were seen in flight, {attempts} times: {last}")


def test_a_client_that_disconnects_aborts_its_generation(server):
    # A non-streamed request whose client goes away once its texts are in the engine (seconds
    # from their end): the proxy cancels the replica's handler, which aborts them.
    def non_streamed():
        before = server.wait_idle()

        async def go():
            async with server.async_client() as c:
                request = asyncio.ensure_future(c.post("/v1/summarize", json={"texts": ["a", "b", "c", "d"], **LONG}))
                await until_in_engine(c, 4, [request])
                request.cancel()  # its connection is closed
                with contextlib.suppress(asyncio.CancelledError):
                    await request

        asyncio.run(go())
        return before

    before = set_up_again_if_not_in_flight(server, non_streamed)
    t_gone = time.monotonic()
    with StallWatch() as stalls:
        state = server.wait_idle(timeout=5)
        dropped_in = time.monotonic() - t_gone
    print(f"\nnon-streamed: engine idle {dropped_in:.2f}s after the client left ({stalls.stalled:.2f}s of it frozen)")
    assert state["in_flight"] == 0 and state["admitted"] == 0, state
    assert state["aborted"] == before["aborted"] + 1 and state["finished"] == before["finished"], json.dumps([before, state])  # not run to its end
    assert dropped_in - stalls.stalled < 1.5

    # A stream read for a few events, then closed.
    body = {"model": server.model, "messages": [{"role": "user", "content": "Go on."}], **LONG["sampling"], "stream": True}
    with server.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
    t_gone = time.monotonic()
    with StallWatch() as stalls:
        state = server.wait_idle(timeout=5)
        dropped_in = time.monotonic() - t_gone
    print(f"streamed: engine idle {dropped_in:.2f}s after the client left ({stalls.stalled:.2f}s of it frozen)")
    assert state["in_flight"] == 0 and state["admitted"] == 0, state
    assert state["aborted"] == before["aborted"] + 2 and state["finished"] == before["finished"], json.dumps([before, state])
    assert dropped_in - stalls.stalled < 1.5


def test_past_admission_requests_get_503_with_retry_after_at_once(server):
    server.wait_idle()  # an earlier test's aborted requests may still hold admission slots

    async def go():
        async with server.async_client() as c:
            # Answers of seconds (about 2 ms a step for 16 texts), so the bound is still full when
            # the extra request comes. (At 500 tokens, about 1 s, the two were once done before
            # the first look at /health/ready.)
            body = {"texts": [f"t{i}" for i in range(8)], "sampling": {"max_tokens": 2000, "min_tokens": 2000, "ignore_eos": True}}
            first = [asyncio.ensure_future(c.post("/v1/summarize", json=body)) for _ in range(2)]  # 16 texts: the bound
            await until_in_engine(c, 16, first)
            t0 = time.monotonic()
            with StallWatch() as stalls:
                extra = await c.post("/v1/sentiment", json={"text": "one more"})
                waited = time.monotonic() - t0
            still_running = not any(f.done() for f in first)
            return [await f for f in first], extra, waited - stalls.stalled, still_running

    first, extra, waited, still_running = set_up_again_if_not_in_flight(server, lambda: asyncio.run(go()))
    print(f"\nthe request past the bound was answered in {waited:.3f}s (freezes left out)")
    assert all(r.status_code == 200 for r in first), [r.text for r in first]
    check_error(extra, 503, "overloaded")
    # At once: while the 16 texts were still running (seconds from their end), not queued until
    # a slot freed. Usually in 10 to 150 ms; 1.1 and 2.0 s were seen in 2 of 10 runs of the
    # module here (not a freeze of the machine; cause not found), hence the bound.
    assert still_running and extra.headers["retry-after"] == "2" and waited < 3.0, waited
    assert server.wait_idle()["admitted"] == 0


# -- last: graceful shutdown --------------------------------------------------------------------
def test_graceful_shutdown_lets_in_flight_requests_finish(server):
    result = {}

    def long_request():
        with server.client(timeout=60) as c:
            body = {"texts": [f"t{i}" for i in range(4)], **LONG}
            result["r"] = c.post("/v1/summarize", json=body)

    def in_flight() -> threading.Thread:
        t = threading.Thread(target=long_request)
        t.start()
        deadline = time.monotonic() + 60
        while server.engine_state()["admitted"] < 4:  # in the engine, seconds from its end
            if not t.is_alive():
                raise NotInFlight(result["r"].status_code, result["r"].text[:200])
            assert time.monotonic() < deadline, "never in flight"
            time.sleep(0.02)
        return t

    t = set_up_again_if_not_in_flight(server, in_flight)
    server.proc.send_signal(signal.SIGTERM)
    t.join(timeout=60)
    r = result["r"]
    assert r.status_code == 200, r.text
    assert [x["output_tokens"] for x in r.json()["results"]] == [LONG["sampling"]["max_tokens"]] * 4
    # The drained server exits by itself; stop() would send a second SIGTERM, which (as a
    # second Ctrl-C) exits at once: wait for the first one's clean end.
    try:
        code = server.proc.wait(timeout=120)
    finally:
        stop(server)
    assert code == 0, server.log.read_text()[-3000:]
    assert "draining in-flight requests" in server.log.read_text()
