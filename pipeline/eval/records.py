"""The typed shapes of evaluation results: what the run summary stores and `pipeline eval` writes."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    # Ledgers written by other versions may hold fields this one lacks: ignore them.
    model_config = ConfigDict(extra="ignore")


class Quality(_Record):
    """Reference-free signals over a task's outputs (rows that failed are not outputs)."""

    outputs: int = 0
    truncated: int = Field(0, description="Outputs cut at max_tokens (finish_reason 'length').")
    truncated_share: Optional[float] = None
    empty: int = Field(0, description="Outputs with no text.")
    empty_share: Optional[float] = None
    repetition_checked: Optional[int] = Field(
        None, description="Outputs checked for repetition: all, or an even sample on runs above 100,000 outputs."
    )
    repetitive: Optional[int] = Field(None, description="Checked outputs in which a word 6-gram occurs twice (not for sentiment).")
    repetitive_share: Optional[float] = None
    seq_rep_4: Optional[float] = Field(None, description="Mean seq-rep-4: 1 - distinct 4-grams / 4-grams per output.")


class Confusion(_Record):
    gold: list[str] = Field(description="Row labels: the gold classes.")
    predicted: list[str] = Field(description="Column labels: the gold classes, then other predictions seen.")
    matrix: list[list[int]]


class TaskMetrics(_Record):
    """A task's outputs against its gold column."""

    reference_field: str
    rows: int = Field(description="Rows with a gold value.")
    failed: int = Field(description="Of them, rows without output (an error record): scored as wrong or empty.")
    metrics: dict[str, Optional[float]] = Field(description="accuracy, macro_f1 | rouge1, rouge2, rougeL | chrf, bleu.")
    quality: Quality
    confusion: Optional[Confusion] = None
    gold: Optional[dict[str, int]] = Field(None, description="Sentiment: gold labels and their counts.")
    predicted: Optional[dict[str, int]] = Field(None, description="Sentiment: predicted labels and their counts.")
    lead_baseline: Optional[dict[str, Optional[float]]] = Field(
        None, description="Summarization: ROUGE of each text's first sentence against the same references."
    )
    rougeL_vs_lead: Optional[float] = None


class RunEvaluation(_Record):
    """The `evaluation` section of a run summary."""

    quality: dict[str, Quality] = Field(default_factory=dict)
    metrics: dict[str, TaskMetrics] = Field(default_factory=dict)
    error: Optional[str] = Field(None, description="Why the evaluation could not be computed (the run still published).")
    seconds: Optional[float] = None
