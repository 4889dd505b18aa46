"""execute(): the one path from (task, text) to a result, on a fake engine.

The fake stands in for vLLM so that every branch (ok, too long, a failed request, an
unparseable answer, an answer cut at max_tokens, a dead engine) is fast to reach; the
real engine runs the same function in tests/engine and tests/batch.
"""

import asyncio
import math

import pytest

from pipeline.config import TasksConfig
from pipeline.engine.engine import EngineDead
from pipeline.engine.outputs import Completion, Generation
from pipeline.errors import ErrorKind
from pipeline.tasks import build_tasks
from pipeline.tasks.execute import ExecContext, execute


class FakeEngine:
    """Answers from a function of the prompt ids; records what it was asked."""

    def __init__(self, answer):
        self.answer = answer
        self.prompts = []

    async def agenerate(self, prompt, params):
        self.prompts.append(list(prompt))
        out = self.answer(prompt, params)
        if isinstance(out, BaseException):
            raise out
        return out


def gen(text, n_tokens=3, finish="stop", logprob=None, prompt_tokens=10):
    return Generation(Completion(text, tuple(range(n_tokens)), finish, logprob), prompt_tokens)


def one(**cfg):
    (task,) = build_tasks(TasksConfig.model_validate(cfg))
    return task


@pytest.fixture(scope="module")
def ctx(tiny_tokenizer):
    return ExecContext(tiny_tokenizer, max_model_len=1024, context_policy="reject")


def run(coro):
    return asyncio.run(coro)


def test_ok_result_has_the_task_columns_and_token_counts(ctx):
    task = one(sentiment={})
    engine = FakeEngine(lambda p, sp: gen("positive", 1, logprob=math.log(0.9), prompt_tokens=len(p)))
    r = run(execute(task, "A fine film.", engine, ctx))
    assert r.ok and r.error_kind is None
    assert r.columns["label"] == "positive" and r.columns["score"] == pytest.approx(0.9)
    assert r.columns["prompt_tokens"] == len(engine.prompts[0]) == r.prompt_tokens
    assert r.columns["output_tokens"] == 1 and r.columns["finish_reason"] == "stop"
    assert r.columns["input_truncated"] is False and r.columns["output_truncated"] is False
    assert set(task.schema().names) - {"row_id", "source", "position", "task", "model", "run_id"} == set(r.columns)


def test_too_long_never_reaches_the_engine(ctx):
    engine = FakeEngine(lambda p, sp: gen("x"))
    r = run(execute(one(summarization={}), "word " * 5000, engine, ctx))
    assert r.error_kind is ErrorKind.TOO_LONG and "max_model_len" in r.error_message
    assert engine.prompts == []


def test_a_failed_request_is_an_error_result(ctx):
    r = run(execute(one(summarization={}), "text", FakeEngine(lambda p, sp: ValueError("bad request")), ctx))
    assert r.error_kind is ErrorKind.GENERATION_ERROR and "bad request" in r.error_message


def test_a_dead_engine_is_raised_not_recorded(ctx):
    with pytest.raises(EngineDead):
        run(execute(one(summarization={}), "text", FakeEngine(lambda p, sp: EngineDead("gone")), ctx))


def test_unparseable_answer_is_invalid_output(ctx):
    r = run(execute(one(sentiment={}), "text", FakeEngine(lambda p, sp: gen("It is good.", 4)), ctx))
    assert r.error_kind is ErrorKind.INVALID_OUTPUT and r.output_tokens == 4


@pytest.mark.parametrize("text,finish", [("Une traduction coup", "length"), ("   ", "stop")])
def test_truncated_or_empty_answers_are_flagged_or_errors(ctx, text, finish):
    engine = FakeEngine(lambda p, sp: gen(text, 4, finish))
    kept = run(execute(one(translation={"target_lang": "French"}), "A text.", engine, ctx))
    assert kept.ok and kept.columns["output_truncated"] is True and kept.output_truncated
    strict = one(translation={"target_lang": "French", "on_truncated": "error"})
    err = run(execute(strict, "A text.", engine, ctx))
    assert err.error_kind is ErrorKind.TRUNCATED_OUTPUT
    assert ("max_tokens" in err.error_message) == (finish == "length")
