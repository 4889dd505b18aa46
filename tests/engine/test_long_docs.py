"""Long documents on real engines: the mechanics of context policy 'split' (parts as
concurrent requests under the engine's request limit, one result per document).

The tiny model's answers are gibberish, so content is checked in tests/tasks/test_long.py
(with markers); here the structure: one output paragraph per source paragraph, every
prompt within the context, the engine never holding more requests than its limit. The
real default model (SmolLM2-135M-Instruct) checks map-reduce summarization.
"""

import asyncio
import json
import time
from pathlib import Path

import pytest

from pipeline.config import EngineConfig, TasksConfig
from pipeline.engine.engine import Engine
from pipeline.tasks import build_tasks
from pipeline.tasks.execute import ExecContext, execute

pytestmark = pytest.mark.engine

MAX_LEN = 512
LIMIT = 8  # engine.max_requests_in_flight: far fewer than a long document's parts
XSUM = Path(__file__).resolve().parents[2] / "bench" / "data" / "xsum_sample50.jsonl"
SMOLLM2 = Path.home() / ".cache" / "pipeline" / "models" / "SmolLM2-135M-Instruct"


class Recording:
    """Passes every request to the real engine and keeps its prompt length."""

    def __init__(self, engine):
        self.engine, self.prompt_lengths = engine, []

    async def agenerate(self, prompt, params, priority=0):
        self.prompt_lengths.append(len(prompt))
        return await self.engine.agenerate(prompt, params, priority=priority)


def one(**cfg):
    (task,) = build_tasks(TasksConfig.model_validate(cfg))
    return task


@pytest.fixture(scope="module")
def tiny_engine(tiny_model):
    e = Engine(str(tiny_model), EngineConfig(max_model_len=MAX_LEN, kv_cache_gib=0.25, max_requests_in_flight=LIMIT)).start()
    yield e
    e.shutdown()


def test_translation_of_twenty_contexts_on_the_tiny_engine(tiny_engine):
    tok = tiny_engine.tokenizer
    paras = [" ".join(f"Line {j} of section {i}: the council met and the vote passed." for j in range(1 + (i * 7) % 23)) for i in range(45)]
    text = "\n\n".join(paras)
    assert len(tok.encode(text, add_special_tokens=False)) > 20 * MAX_LEN
    # min_tokens: an empty answer would be a flagged, empty paragraph; the structure is what is checked.
    task = one(translation={"target_lang": "French", "sampling": {"max_tokens": 48, "min_tokens": 4}})
    engine = Recording(tiny_engine)
    t0 = time.perf_counter()
    r = asyncio.run(execute(task, text, engine, ExecContext.for_engine(tok, tiny_engine.cfg)))
    seconds = time.perf_counter() - t0
    assert r.ok, r.error_message
    c = r.columns
    print(f"\n{len(tok.encode(text))} tokens (20 x {MAX_LEN} = {20 * MAX_LEN}) translated in {c['parts']} parts "
          f"({len(engine.prompt_lengths)} requests) in {seconds:.1f} s")
    assert len(c["output_text"].split("\n\n")) == len(paras)  # one output paragraph per source paragraph
    assert c["parts"] >= 20 and len(engine.prompt_lengths) >= c["parts"]
    assert max(engine.prompt_lengths) <= MAX_LEN - 48
    assert c["prompt_tokens"] == sum(engine.prompt_lengths) and c["output_tokens"] >= 4 * c["parts"]
    assert 1 < tiny_engine.peak_in_flight <= LIMIT  # paced by the engine's limit, not sent all at once


def test_sentiment_of_a_long_text_on_the_tiny_engine(tiny_engine):
    tok = tiny_engine.tokenizer
    text = "\n\n".join(f"Review part {i}: I loved this movie; the acting was wonderful!" * 6 for i in range(12))
    task = one(sentiment={})
    r = asyncio.run(execute(task, text, tiny_engine, ExecContext.for_engine(tok, tiny_engine.cfg)))
    assert r.ok, r.error_message
    assert r.columns["parts"] > 1 and r.columns["label"] in task.cfg.labels and 0 < r.columns["score"] <= 1


@pytest.mark.smollm2
def test_map_reduce_summary_on_the_default_model_within_the_bound():
    if not (SMOLLM2 / "config.json").exists():
        pytest.skip("the default model is not prepared (pipeline models pull)")
    articles = [json.loads(line)["article"] for line in XSUM.open(encoding="utf-8")][:20]
    text = "\n\n".join(articles)
    max_words = 30
    task = one(summarization={"max_words": max_words})
    with Engine(str(SMOLLM2), EngineConfig(max_model_len=MAX_LEN, kv_cache_gib=0.25)) as e:
        engine = Recording(e)
        n = len(e.tokenizer.encode(text, add_special_tokens=False))
        t0 = time.perf_counter()
        r = asyncio.run(execute(task, text, engine, ExecContext.for_engine(e.tokenizer, e.cfg)))
        seconds = time.perf_counter() - t0
        assert r.ok, r.error_message
        final_tokens = len(e.tokenizer.encode(r.columns["output_text"], add_special_tokens=False))
    c = r.columns
    words = len(c["output_text"].split())
    print(f"\n{n} tokens summarized in {c['parts']} parts, depth {c['depth']}, {len(engine.prompt_lengths)} requests, "
          f"{seconds:.1f} s: {words} words, finish {c['finish_reason']}: {c['output_text'][:200]!r}")
    assert n > 6 * MAX_LEN and c["parts"] >= 6 and c["depth"] >= 2
    assert len(engine.prompt_lengths) > c["parts"]  # the summaries were summarized
    assert max(engine.prompt_lengths) <= MAX_LEN - task.max_output_tokens()  # every request within the context
    # One summary within the task's answer budget (max_tokens = 1.5 x max_words + 16), not the
    # parts' summaries strung together (that would be about parts x max_words words).
    assert 0 < final_tokens <= task.max_output_tokens() + 2 and c["output_tokens"] > c["parts"] * 10
    assert words < c["parts"] * max_words / 2
