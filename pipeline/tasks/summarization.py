"""Summarization with a length bound in words."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pydantic import Field

from pipeline.tasks.base import Task, TaskConfig


class SummarizationConfig(TaskConfig):
    max_words: int = Field(60, ge=5, le=1000, description="Length bound given to the model, in words.")


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
    # A summary is one paragraph: a line break ends it. Without this stop the default model
    # went on after its summary (the article's next lines, or one sentence over and over)
    # until max_tokens; README, "Prompts for summaries and translations".
    default_sampling = {"stop": ["\n"]}
    split_mode = "reduce"

    def params(self) -> dict[str, Any]:
        return {"max_words": self.cfg.max_words}

    def sampling_kwargs(self) -> dict[str, Any]:
        # About 1.5 tokens per English word, plus slack; an explicit override wins.
        kw = super().sampling_kwargs()
        if self.cfg.sampling.max_tokens is None:
            kw["max_tokens"] = int(self.cfg.max_words * 1.5) + 16
        return kw

    def parse(self, completion) -> dict[str, Any]:
        return {"output_text": completion.text.strip(), "max_words": self.cfg.max_words, "depth": 1}
