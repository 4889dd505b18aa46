"""Translation into a target language (source language optional)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from typing import Optional

from pydantic import Field

from pipeline.tasks.base import Task, TaskConfig


class TranslationConfig(TaskConfig):
    target_lang: str = Field(description="Target language, e.g. 'fr' or 'French'.")
    source_lang: Optional[str] = Field(None, description="Source language; the model infers it when omitted.")


class Translation(Task):
    name = "translation"
    route = "translate"
    description = "Each text translated into a target language."
    config_model = TranslationConfig
    extra_columns = [pa.field("source_lang", pa.string()), pa.field("target_lang", pa.string())]
    default_system = (
        "You are a professional translator. Translate the user's text {from_clause}into {target_lang}. "
        "Reply with the translation only."
    )
    default_user = "{text}"
    default_sampling = {"max_tokens": 512}
    split_mode = "join"
    # A translation runs longer than its source in tokens (European languages in an
    # English-centric tokenizer: up to about 1.5x), and it must fit max_tokens: a part holds
    # at most max_tokens / 1.5 source tokens, and a text longer than that is split even when
    # it would fit the context (one request would have its translation cut).
    OUTPUT_TOKENS_PER_SOURCE_TOKEN = 1.5

    def params(self) -> dict[str, Any]:
        src = self.cfg.source_lang
        return {
            "target_lang": self.cfg.target_lang,
            "source_lang": src,
            "from_clause": f"from {src} " if src else "",
        }

    def __init__(self, cfg: TranslationConfig):
        super().__init__(cfg)
        self._one_line: Any = None

    def sampling_params_for(self, text: str):
        """A one-line text's translation is one line: stop at the first line break, which
        ends the commentary small models add after it ("This translation means ...").
        A text with line breaks keeps them (no stop), and so does an explicit sampling.stop."""
        if self.cfg.sampling.stop is not None or "\n" in text.strip():
            return self.sampling_params()
        if self._one_line is None:
            p = self.sampling_params().clone()
            p.stop = ["\n"]
            self._one_line = p
        return self._one_line

    def part_tokens(self, room: int) -> int:
        return min(room, int(self.max_output_tokens() / self.OUTPUT_TOKENS_PER_SOURCE_TOKEN))

    def language(self) -> str:
        # sentencex takes ISO codes and falls back to generic rules for names it does not know.
        return (self.cfg.source_lang or "en").lower()

    def parse(self, completion) -> dict[str, Any]:
        return {
            "output_text": completion.text.strip(),
            "source_lang": self.cfg.source_lang,
            "target_lang": self.cfg.target_lang,
        }
