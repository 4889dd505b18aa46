"""Task definitions: prompts, sampling, parsing and schemas (no engine needed)."""

import math

import pytest

from pipeline.config import TasksConfig
from pipeline.tasks import Completion, TaskOutputError, build_tasks


def tasks(**cfg):
    return {t.name: t for t in build_tasks(TasksConfig.model_validate(cfg))}


def test_build_order_is_fixed():
    names = [t.name for t in build_tasks(TasksConfig.model_validate(
        {"translation": {"target_lang": "fr"}, "sentiment": {}, "summarization": {}}))]
    assert names == ["sentiment", "summarization", "translation"]


def test_shared_system_prefix_and_text_in_user_turn():
    t = tasks(translation={"target_lang": "German", "source_lang": "English"})["translation"]
    a, b = t.messages("first {odd} text"), t.messages("second")
    assert a[0] == b[0]  # identical system turn: a prefix the engine caches once
    assert "from English into German" in a[0]["content"]
    assert a[1]["content"] == "first {odd} text"  # braces in user text survive templating


def test_prompt_and_sampling_overrides():
    t = tasks(summarization={"max_words": 12, "prompt": {"system": "Short: {max_words} words.", "user": "DOC: {text}"},
                             "sampling": {"temperature": 0.7, "max_tokens": 50}})["summarization"]
    m = t.messages("hello")
    assert m[0]["content"] == "Short: 12 words." and m[1]["content"] == "DOC: hello"
    kw = t.sampling_kwargs()
    assert kw["temperature"] == 0.7 and kw["max_tokens"] == 50


def test_summary_length_bound_sets_max_tokens():
    assert tasks(summarization={"max_words": 20})["summarization"].max_output_tokens() == 46


def test_summary_ends_at_a_sentence_end_or_a_line_break():
    p = tasks(summarization={})["summarization"].sampling_params()
    assert "\n" in p.stop and ". " in p.stop and p.min_tokens > 0  # not at "Mr. " as the first word
    assert p.include_stop_str_in_output  # the summary keeps its full stop
    line = tasks(summarization={"ends_at": "line"})["summarization"].sampling_params()
    assert (line.stop, line.min_tokens, line.include_stop_str_in_output) == (["\n"], 0, False)
    own = tasks(summarization={"sampling": {"stop": ["###"]}})["summarization"].sampling_params()
    assert own.stop == ["###"] and not own.include_stop_str_in_output
    assert tasks(summarization={"sampling": {"max_tokens": 4}})["summarization"].sampling_params().min_tokens == 4


def test_sentiment_structured_choice_and_parse():
    t = tasks(sentiment={})["sentiment"]
    kw = t.sampling_kwargs()
    assert kw["structured_outputs"] == {"choice": ["positive", "negative", "neutral"]}
    assert kw["logprobs"] == 20
    out = t.parse(Completion(text="negative", token_ids=(5,), finish_reason="stop", cumulative_logprob=math.log(0.8)))
    assert out["label"] == "negative" and out["score"] == pytest.approx(0.8)
    with pytest.raises(TaskOutputError):
        t.parse(Completion(text="It is negative.", token_ids=(1, 2), finish_reason="length"))


def test_user_cannot_override_away_the_label_constraint():
    t = tasks(sentiment={"labels": ["pos", "neg"], "sampling": {"max_tokens": 3}})["sentiment"]
    assert t.sampling_kwargs()["structured_outputs"] == {"choice": ["pos", "neg"]}


def test_schemas_hold_common_and_task_columns():
    ts = tasks(sentiment={}, summarization={}, translation={"target_lang": "fr"})
    for t in ts.values():
        names = t.schema().names
        assert names[:4] == ["row_id", "source", "position", "task"]
        assert {"output_text", "prompt_tokens", "output_tokens", "finish_reason", "model", "run_id"} <= set(names)
    assert {"label", "score"} <= set(ts["sentiment"].schema().names)
    assert {"source_lang", "target_lang"} <= set(ts["translation"].schema().names)


def test_a_one_line_text_is_translated_up_to_the_first_line_break():
    t = tasks(translation={"target_lang": "French"})["translation"]
    assert t.sampling_params_for("A man rides a bicycle.").stop == ["\n"]
    assert t.sampling_params_for("A man rides a bicycle.") is t.sampling_params_for("Another line.")  # built once
    assert not t.sampling_params_for("First paragraph.\n\nSecond paragraph.").stop  # line breaks kept
    assert not t.sampling_params().stop
    explicit = tasks(translation={"target_lang": "French", "sampling": {"stop": []}})["translation"]
    assert not explicit.sampling_params_for("A man rides a bicycle.").stop


def test_worked_examples_are_earlier_turns_through_the_user_template():
    t = tasks(translation={"target_lang": "French", "prompt": {
        "user": "In French: {text}", "examples": [{"text": "Good morning.", "answer": "Bonjour."}]}})["translation"]
    m = t.messages("Thank you.")
    assert [x["role"] for x in m] == ["system", "user", "assistant", "user"]
    assert m[1]["content"] == "In French: Good morning." and m[2]["content"] == "Bonjour."
    assert m[3]["content"] == "In French: Thank you."
    none = tasks(translation={"target_lang": "French", "prompt": {"examples": []}})["translation"]
    assert [x["role"] for x in none.messages("x")] == ["system", "user"]
