"""Context policy 'split' in execute(): long texts as several requests, one result.

A fake engine stands in for vLLM here, because the checks are on content: it answers
with the markers it finds in the prompt's text (or whatever a test needs), so that a
translation's paragraphs can be traced back to the source, which a real small model's
answers cannot. The same code runs on a real engine in tests/engine/test_long_docs.py.
Prompts are rendered with the tiny model's real tokenizer and chat template.
"""

import asyncio
import re

import pytest

from pipeline.config import TasksConfig
from pipeline.engine.engine import EngineDead
from pipeline.engine.outputs import Completion, Generation
from pipeline.errors import ErrorKind
from pipeline.tasks import build_tasks
from pipeline.tasks.execute import ExecContext, SplitPlan, execute, plan_parts

MAX_LEN = 512
MARK = re.compile(r"\[P\d+S\d+\]")


def one(**cfg):
    (task,) = build_tasks(TasksConfig.model_validate(cfg))
    return task


def run(coro):
    return asyncio.run(coro)


def document(n_paragraphs=60, seed=7):
    """Paragraphs of 1 to 40 marked sentences: short ones pack together, long ones split."""
    paras = []
    for i in range(n_paragraphs):
        n = 1 + (i * seed) % 40
        paras.append(" ".join(f"[P{i}S{j}] The council met on day {j} and the vote passed." for j in range(n)))
    return "\n\n".join(paras), paras


class MarkerEngine:
    """Answers with the markers of the user's text, one output paragraph per input paragraph
    (or, with merge=True, all on one line: a model that loses paragraph breaks)."""

    def __init__(self, tokenizer, merge=False, fail=None, answer=None):
        self.tok, self.merge, self.fail, self.answer = tokenizer, merge, fail, answer
        self.prompts = []
        self.priorities = set()
        self.in_flight = self.peak = 0

    def user_text(self, ids):
        text = self.tok.decode(ids)
        return text.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>", 1)[0]

    async def agenerate(self, prompt, params, priority=0):
        self.priorities.add(priority)
        self.prompts.append(list(prompt))
        k = len(self.prompts)  # this request's number, in the order they came
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            user = self.user_text(prompt)
            if self.fail is not None:
                err = self.fail(user, k)
                if err is not None:
                    raise err
            if self.answer is not None:
                out = self.answer(user)
            else:
                paras = [" ".join(MARK.findall(p)) for p in re.split(r"\n\s*\n", user)]
                out = (" " if self.merge else "\n\n").join(p for p in paras if p)
            return Generation(Completion(out, tuple(range(max(1, len(out) // 8))), "stop", -0.5), len(prompt))
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
def ctx(tiny_tokenizer):
    return ExecContext(tiny_tokenizer, MAX_LEN)


def budget(task):
    return MAX_LEN - task.max_output_tokens()


@pytest.mark.parametrize("merge", [False, True], ids=["model keeps paragraphs", "model merges paragraphs"])
def test_translation_of_twenty_contexts_keeps_every_paragraph_in_order(ctx, tiny_tokenizer, merge):
    text, paras = document()
    assert len(tiny_tokenizer.encode(text)) > 20 * MAX_LEN
    task = one(translation={"target_lang": "French", "sampling": {"max_tokens": 128}})
    engine = MarkerEngine(tiny_tokenizer, merge=merge)
    r = run(execute(task, text, engine, ctx))
    assert r.ok, r.error_message
    out = r.columns["output_text"].split("\n\n")
    assert len(out) == len(paras)  # one output paragraph per source paragraph
    for i, (src, got) in enumerate(zip(paras, out)):
        assert MARK.findall(got) == MARK.findall(src), f"paragraph {i}"  # none dropped, none moved
    assert r.columns["parts"] > 20 and r.columns["input_truncated"] is False
    assert engine.priorities == {1}  # parts queue behind whole texts
    assert max(len(p) for p in engine.prompts) <= budget(task)
    assert r.prompt_tokens == r.columns["prompt_tokens"] == sum(len(p) for p in engine.prompts)
    if merge:  # packed parts came back as one paragraph: redone one paragraph per request
        assert len(engine.prompts) > r.columns["parts"] - 1
    else:
        assert len(engine.prompts) == r.columns["parts"]


def test_a_text_that_fits_is_one_request(ctx, tiny_tokenizer):
    engine = MarkerEngine(tiny_tokenizer)
    task = one(translation={"target_lang": "French", "sampling": {"max_tokens": 128}})
    r = run(execute(task, "[P0S0] A short text.", engine, ctx))
    assert r.ok and r.columns["parts"] == 1 and len(engine.prompts) == 1 and engine.priorities == {0}
    # 512 answer tokens leave no room in a 512-token context: said so, before any request.
    r = run(execute(one(translation={"target_lang": "French"}), "A short text.", engine, ctx))
    assert r.error_kind is ErrorKind.TOO_LONG and "raise engine.max_model_len" in r.error_message
    assert len(engine.prompts) == 1


def test_translation_splits_what_would_not_fit_its_answer_budget(ctx, tiny_tokenizer):
    """Fits the context, but its translation would not fit max_tokens: split anyway."""
    text = " ".join(f"[P0S{j}] The vote passed." for j in range(8))
    task = one(translation={"target_lang": "French", "sampling": {"max_tokens": 40}})
    n = len(tiny_tokenizer.encode(text))
    assert 40 < n < budget(task) - 60
    assert isinstance(plan_parts(task, text, ctx), SplitPlan)
    assert isinstance(plan_parts(one(summarization={"max_words": 10}), text, ctx), list)  # its prompt ids


def test_other_policies_still_apply(ctx, tiny_tokenizer):
    text, _ = document()
    task = one(translation={"target_lang": "French", "context_policy": "truncate", "sampling": {"max_tokens": 128}})
    engine = MarkerEngine(tiny_tokenizer)
    r = run(execute(task, text, engine, ctx))
    assert r.ok and r.columns["input_truncated"] and r.columns["parts"] == 1 and len(engine.prompts) == 1
    # The engine-wide policy applies to tasks that do not set their own.
    task = one(translation={"target_lang": "French", "sampling": {"max_tokens": 128}})
    r = run(execute(task, text, engine, ExecContext(tiny_tokenizer, MAX_LEN, "reject")))
    assert r.error_kind is ErrorKind.TOO_LONG


def test_a_part_that_fails_once_is_retried(ctx, tiny_tokenizer):
    text, paras = document(20)
    failed = set()

    def flaky(user, k):
        key = MARK.findall(user)[0]
        if key not in failed:
            failed.add(key)
            return ValueError("transient")
        return None

    engine = MarkerEngine(tiny_tokenizer, fail=flaky)
    r = run(execute(one(translation={"target_lang": "French", "sampling": {"max_tokens": 128}}), text, engine, ctx))
    assert r.ok and len(r.columns["output_text"].split("\n\n")) == len(paras)
    assert len(engine.prompts) == 2 * r.columns["parts"]


def test_a_part_that_keeps_failing_fails_the_whole_row(ctx, tiny_tokenizer):
    text, _ = document(40)
    engine = MarkerEngine(tiny_tokenizer, fail=lambda user, k: ValueError("bad part") if "[P30S" in user else None)
    task = one(translation={"target_lang": "French", "sampling": {"max_tokens": 128}})
    r = run(execute(task, text, engine, ctx))
    assert r.error_kind is ErrorKind.GENERATION_ERROR and r.columns is None  # never a half translation
    assert "bad part" in r.error_message and re.search(r"part \d+ of \d+", r.error_message)
    assert "after 2 attempts" in r.error_message
    assert r.prompt_tokens > 0  # what was spent is still counted


def test_a_dead_engine_in_one_part_is_raised(ctx, tiny_tokenizer):
    text, _ = document(30)
    engine = MarkerEngine(tiny_tokenizer, fail=lambda user, k: EngineDead("gone") if k == 3 else None, answer=lambda u: "ok")
    with pytest.raises(EngineDead):
        run(execute(one(summarization={"max_words": 10}), text, engine, ctx))


def test_summaries_are_summarized_until_one_fits(ctx, tiny_tokenizer):
    text, _ = document()
    task = one(summarization={"max_words": 20})  # 46 answer tokens
    # A summary of about 40 tokens whatever the input: several levels are needed.
    engine = MarkerEngine(tiny_tokenizer, answer=lambda user: "A summary of the text, with its main points. " * 3)
    r = run(execute(task, text, engine, ctx))
    assert r.ok, r.error_message
    c = r.columns
    assert c["parts"] > 20 and c["depth"] >= 3
    assert max(len(p) for p in engine.prompts) <= budget(task)
    # Each level packs several summaries per request, so the requests shrink level by level.
    assert c["parts"] < len(engine.prompts) < 2 * c["parts"]
    assert c["output_text"].startswith("A summary") and c["output_tokens"] == r.output_tokens


def test_summaries_that_cannot_be_combined_are_too_long(tiny_tokenizer):
    task = one(summarization={"max_words": 60})  # 106 answer tokens
    ctx = ExecContext(tiny_tokenizer, 360)
    long_answer = " ".join(f"point{i}" for i in range(80))
    engine = MarkerEngine(tiny_tokenizer, answer=lambda user: long_answer)
    r = run(execute(task, document(20)[0], engine, ctx))
    assert r.error_kind is ErrorKind.TOO_LONG and "max_model_len" in r.error_message


def test_sentiment_averages_the_parts(ctx, tiny_tokenizer):
    # Paragraphs 0-19 answer "negative", the rest "positive": the longer side wins.
    text, paras = document(50, seed=3)
    task = one(sentiment={})

    def label(user):
        ps = [int(m) for m in re.findall(r"\[P(\d+)S", user)]
        return "negative" if sum(p < 20 for p in ps) > len(ps) / 2 else "positive"

    r = run(execute(task, text, MarkerEngine(tiny_tokenizer, answer=label), ctx))
    assert r.ok and r.columns["parts"] > 5
    assert r.columns["label"] == r.columns["output_text"] == "positive"
    assert 0.5 < r.columns["score"] < 1.0  # the token-weighted share of the parts that said so


def test_parts_all_go_to_the_engine_at_once(ctx, tiny_tokenizer):
    """The parts are concurrent requests (the engine's own request limit paces them)."""
    text, _ = document()
    engine = MarkerEngine(tiny_tokenizer)
    r = run(execute(one(translation={"target_lang": "French", "sampling": {"max_tokens": 128}}), text, engine, ctx))
    assert r.ok and engine.peak == r.columns["parts"]
