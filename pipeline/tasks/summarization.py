"""Summarization with a length bound in words."""

from __future__ import annotations

from typing import Any, Literal

import pyarrow as pa

from pydantic import Field

from pipeline.tasks.base import Task, TaskConfig


class SummarizationConfig(TaskConfig):
    max_words: int = Field(60, ge=5, le=1000, description="Length bound given to the model, in words.")
    ends_at: Literal["sentence", "line"] = Field(
        "sentence",
        description="Where a summary ends: 'sentence', at its first sentence end ('. ', '! ' or '? ' once 8 "
        "tokens are out, or a line break): a one-sentence summary, which scored best on the default model "
        "(README, 'Prompts for summaries and translations'); 'line', at a line break: one paragraph of up to "
        "max_words words. An explicit sampling.stop wins.",
    )


class Summarization(Task):
    name = "summarization"
    route = "summarize"
    description = "A summary of each text, bounded in words."
    config_model = SummarizationConfig
    extra_columns = [
        pa.field("max_words", pa.int32()),
        # Summarization levels behind output_text: 1 when the text fit one request; a split
        # text's parts are summarized (level 1), then their summaries (2), ... until one.
        pa.field("depth", pa.int32()),
    ]
    default_system = (
        "You are a careful editor. Summarize the user's text in at most {max_words} words. "
        "Reply with the summary only."
    )
    default_user = "{text}"
    # A summary ends at its first sentence end (ends_at 'sentence'). Without a stop the default
    # model went on after its summary (the article's next lines, or one sentence over and
    # over) until max_tokens; a line-break stop left 18% cut and 18% repeating themselves, a
    # sentence-end stop none, and ROUGE-L rose from 1.05x to 1.27x the lead baseline (README,
    # "Prompts for summaries and translations"). min_tokens: a stop string is only looked for
    # after that many tokens, so an abbreviation at the start ("Mr. Smith") does not end the
    # summary at its first word.
    SENTENCE_STOP = ["\n", ". ", "! ", "? "]
    SENTENCE_MIN_TOKENS = 8
    # The stop string stays in the output (then stripped): a summary keeps its full stop.
    default_sampling = {"stop": SENTENCE_STOP, "min_tokens": SENTENCE_MIN_TOKENS, "include_stop_str_in_output": True}
    split_mode = "reduce"

    def params(self) -> dict[str, Any]:
        return {"max_words": self.cfg.max_words}

    def sampling_kwargs(self) -> dict[str, Any]:
        # About 1.5 tokens per English word, plus slack; an explicit override wins.
        kw = super().sampling_kwargs()
        if self.cfg.ends_at == "line":
            if self.cfg.sampling.stop is None:
                kw["stop"] = ["\n"]  # one paragraph
            if self.cfg.sampling.min_tokens is None:
                kw.pop("min_tokens", None)
        if kw.get("stop") != self.SENTENCE_STOP:
            kw.pop("include_stop_str_in_output", None)  # a line break, or the user's own stops: left out
        if self.cfg.sampling.max_tokens is None:
            kw["max_tokens"] = int(self.cfg.max_words * 1.5) + 16
        if self.cfg.sampling.min_tokens is None and "min_tokens" in kw:
            kw["min_tokens"] = min(kw["min_tokens"], kw["max_tokens"])  # a small max_tokens override stays valid
        return kw

    def parse(self, completion) -> dict[str, Any]:
        return {"output_text": completion.text.strip(), "max_words": self.cfg.max_words, "depth": 1}
