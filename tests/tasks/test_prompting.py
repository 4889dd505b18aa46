"""Prompt rendering through a real chat template, and the too-long policy."""

import pytest

from pipeline.config import TasksConfig
from pipeline.tasks import build_tasks
from pipeline.tasks.prompting import PromptTooLong, render_tokens


@pytest.fixture(scope="module")
def summarize():
    return build_tasks(TasksConfig(summarization={"max_words": 20}))[0]  # 46 output tokens


def test_renders_through_the_chat_template(summarize, tiny_tokenizer):
    ids, truncated = render_tokens(summarize, "A short text.", tiny_tokenizer, 512, "truncate")
    text = tiny_tokenizer.decode(ids)
    assert not truncated
    assert "A short text." in text and "Summarize" in text
    assert text.rstrip().endswith("assistant")  # generation prompt opened


def test_truncate_keeps_the_start_and_fits(summarize, tiny_tokenizer):
    long = " ".join(f"word{i}" for i in range(3000))
    ids, truncated = render_tokens(summarize, long, tiny_tokenizer, 512, "truncate")
    assert truncated and len(ids) <= 512 - 46
    assert "word0" in tiny_tokenizer.decode(ids).replace(" ", "")


def test_truncate_a_megabyte_cheaply(summarize, tiny_tokenizer):
    ids, truncated = render_tokens(summarize, "x" * 1_000_000, tiny_tokenizer, 512, "truncate")
    assert truncated and len(ids) <= 466


def test_reject_raises_with_what_to_do(summarize, tiny_tokenizer):
    with pytest.raises(PromptTooLong, match="max_model_len"):
        render_tokens(summarize, "word " * 3000, tiny_tokenizer, 512, "reject")
    ids, truncated = render_tokens(summarize, "fits", tiny_tokenizer, 512, "reject")
    assert ids and not truncated
