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
    description = "Each text translated into a target language."
    config_model = TranslationConfig
    extra_columns = [pa.field("source_lang", pa.string()), pa.field("target_lang", pa.string())]
    default_system = (
        "You are a professional translator. Translate the user's text {from_clause}into {target_lang}. "
        "Reply with the translation only."
    )
    default_user = "{text}"
    default_sampling = {"max_tokens": 512}

    def params(self) -> dict[str, Any]:
        src = self.cfg.source_lang
        return {
            "target_lang": self.cfg.target_lang,
            "source_lang": src,
            "from_clause": f"from {src} " if src else "",
        }

    def parse(self, completion) -> dict[str, Any]:
        return {
            "output_text": completion.text.strip(),
            "source_lang": self.cfg.source_lang,
            "target_lang": self.cfg.target_lang,
        }
