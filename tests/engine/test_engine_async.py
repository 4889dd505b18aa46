"""The engine's submit API on the tiny model: several callers in flight on one engine,
a bad request failing alone, prefix-cache counters. One engine for the module."""

import threading

import pytest

from pipeline.config import EngineConfig, TasksConfig
from pipeline.engine.engine import Engine, EngineError, Generation
from pipeline.tasks import build_tasks
from pipeline.tasks.prompting import render_tokens

pytestmark = pytest.mark.engine

TEXTS = [f"Document number {i} talks about the weather, the sea and the harbour at dawn." for i in range(24)]


@pytest.fixture(scope="module")
def engine(tiny_model):
    # block_size 32: the summarization instruction (about 50 tokens) fills one whole block,
    # so prefix caching has something to serve (vLLM's CPU default is 128).
    e = Engine(str(tiny_model), EngineConfig(max_model_len=512, max_num_seqs=16, kv_cache_gib=0.25, block_size=32)).start()
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def prompts(engine):
    (task,) = build_tasks(TasksConfig(summarization={"max_words": 10, "sampling": {"max_tokens": 12, "min_tokens": 12}}))
    ids = [render_tokens(task, t, engine.tokenizer, 512, "truncate")[0] for t in TEXTS]
    return ids, task.sampling_params()


def test_concurrent_callers_get_their_own_results_in_order(engine, prompts):
    ids, params = prompts
    alone = engine.generate(ids, [params] * len(ids))
    assert all(isinstance(g, Generation) for g in alone)
    assert [g.prompt_tokens for g in alone] == [len(p) for p in ids]
    assert all(len(g.completion.token_ids) == 12 for g in alone)

    # Three callers on three threads, their requests all in the engine together.
    halves = {}

    def call(k, part):
        halves[k] = engine.generate(part, [params] * len(part))

    parts = {0: ids[:8], 1: ids[8:16], 2: ids[16:]}
    threads = [threading.Thread(target=call, args=kv) for kv in parts.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    together = halves[0] + halves[1] + halves[2]
    # Greedy decoding: the same prompt gives the same tokens, whoever else is in the batch.
    assert [g.completion.token_ids for g in together] == [g.completion.token_ids for g in alone]
    assert engine.in_flight == 0 and engine.stalled_for() == 0.0
    assert engine.finished_requests >= 2 * len(ids)


def test_a_bad_request_fails_alone(engine, prompts):
    ids, params = prompts
    too_long = list(ids[0]) * 40  # far past max_model_len 512
    out = engine.generate([ids[0], too_long, ids[1]], [params] * 3)
    assert isinstance(out[0], Generation) and isinstance(out[2], Generation)
    assert isinstance(out[1], Exception)
    assert "512" in str(out[1]) or "length" in str(out[1]).lower()
    assert not engine.is_dead()


def test_prefix_cache_serves_the_shared_instruction(engine, prompts):
    ids, params = prompts
    before = engine.metrics()
    engine.generate(ids, [params] * len(ids))
    after = engine.metrics()
    queries = after["prefix_cache_queries"] - before.get("prefix_cache_queries", 0)
    hits = after["prefix_cache_hits"] - before.get("prefix_cache_hits", 0)
    assert queries >= sum(len(p) for p in ids) * 0.9
    # Every prompt has been seen before: at least the full shared 32-token block of each hits.
    assert hits >= 32 * len(ids)


def test_submit_before_start_is_a_clear_error(tiny_model):
    with pytest.raises(EngineError, match="not started"):
        Engine(str(tiny_model), EngineConfig()).submit([[1, 2, 3]], [None])


def test_per_request_api_from_another_event_loop(engine, prompts):
    """agenerate and astream from a caller's own loop (a Serve replica's, say) give what
    the list API gives: greedy, so the same tokens."""
    import asyncio

    ids, params = prompts
    (ref,) = engine.generate(ids[:1], [params])

    async def caller():
        one = await engine.agenerate(ids[0], params)
        chunks = [c async for c in engine.astream(ids[0], params)]
        return one, chunks

    one, chunks = asyncio.run(caller())
    assert one.completion.token_ids == ref.completion.token_ids
    assert len(chunks) > 1  # streamed, not one final blob
    assert "".join(c.text for c in chunks) == ref.completion.text
    assert sum(len(c.token_ids) for c in chunks) == len(ref.completion.token_ids)
    assert chunks[-1].finish_reason == ref.completion.finish_reason
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_cancelling_a_caller_aborts_its_request_in_the_engine(engine, prompts):
    """A client that goes away must free its slot: the engine's running count drops."""
    import asyncio
    import time

    from vllm import SamplingParams

    ids, _ = prompts
    endless = SamplingParams(max_tokens=400, ignore_eos=True, min_tokens=400)

    async def caller():
        task = asyncio.ensure_future(engine.agenerate(ids[0], endless))
        stream = engine.astream(ids[1], endless)
        first = await stream.__anext__()
        await asyncio.sleep(0.3)
        assert engine.in_flight == 2
        task.cancel()
        await stream.aclose()
        with pytest.raises(asyncio.CancelledError):
            await task
        return first

    assert asyncio.run(caller()).text is not None
    deadline = time.monotonic() + 10
    while engine.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.in_flight == 0
    # vLLM's own view: nothing left running or waiting once the aborts went through.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and engine.metrics().get("num_requests_running", 0):
        time.sleep(0.1)
    assert engine.metrics().get("num_requests_running", 0) == 0
