"""Sentiment: one label from a fixed set, enforced by vLLM structured outputs."""

from __future__ import annotations

import asyncio
import copy
import math
from typing import TYPE_CHECKING, Any, Literal, Optional

import pyarrow as pa

from pydantic import Field, model_validator

from pipeline.tasks import calibration as cal
from pipeline.tasks.base import Completion, Task, TaskConfig, TaskOutputError

if TYPE_CHECKING:
    from pipeline.tasks.execute import EngineLike, ExecContext

# Label -> probability, one entry per label of the task.
PROBABILITIES = pa.map_(pa.string(), pa.float64())


# Chosen by measurement with SmolLM2-135M-Instruct (README, "Calibrated sentiment"): at 3,
# 9 of 48 reviews people rated neutral come out neutral (none uncalibrated), and 9 of 200
# clearly positive or negative short reviews and 4 of 200 IMDB reviews do; at 2, 20 of 48,
# but 52 of 200 and 15 of 200; at 4, 2 of 48.
NEUTRAL_THRESHOLD = 3.0


class SentimentConfig(TaskConfig):
    labels: list[str] = Field(
        ["positive", "negative", "neutral"],
        min_length=2,
        description="Allowed labels; every answer is one of them (vLLM structured outputs).",
    )
    calibration: Literal["contextual", "off"] = Field(
        "contextual",
        description="'contextual': the label is argmax of the label probabilities divided by the model's "
        "probabilities on content-free inputs (Zhao et al. 2021; pipeline/tasks/calibration.py), computed "
        "once per model, prompt and label set and cached. 'off': the model's own answer.",
    )
    content_free_inputs: list[str] = Field(
        ["N/A", "", "[MASK]"],
        min_length=1,
        description="Texts that carry no sentiment, put in the prompt in place of the text to measure the "
        "model's lean toward each label (their label probabilities are averaged).",
    )
    neutral_label: Optional[str] = Field(
        "neutral",
        description="The label that means 'neither' (when the label set has it). With calibration on, the other "
        "labels are calibrated among themselves, this one keeps its raw probability, and it is chosen when it is "
        "the most probable or by neutral_threshold. null: no such label.",
    )
    neutral_threshold: Optional[float] = Field(
        NEUTRAL_THRESHOLD,
        gt=0,
        description="With calibration on and the neutral label in the set: the text is neutral when the model gives "
        "neutral at least this many times the probability it gives it on the content-free inputs (lower: neutral "
        "more often). null: neutral only when it is the most probable label.",
    )

    @model_validator(mode="after")
    def _distinct_labels(self) -> "SentimentConfig":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        return self


class Sentiment(Task):
    name = "sentiment"
    route = "sentiment"
    description = "One label per text from a fixed set (default positive, negative, neutral)."
    config_model = SentimentConfig
    # 2: label probabilities from the first answer token, contextual calibration.
    parser_version = 2
    extra_columns = [
        pa.field("label", pa.string()),
        # Probability of `label`: calibrated when calibration is on, else the model's probability
        # of its answer (exp of its tokens' summed log-probs).
        pa.field("score", pa.float64()),
        # Every label's probability (sums to one): calibrated when calibration is on, else raw.
        pa.field("probabilities", PROBABILITIES),
        # What the model itself answered, and its label probabilities at the first answer
        # token renormalised over the labels, before calibration.
        pa.field("raw_label", pa.string()),
        pa.field("raw_probabilities", PROBABILITIES),
    ]
    default_system = (
        "You are a sentiment classifier. Read the user's text and answer with exactly one word: "
        "{labels}."
    )
    default_user = "Text: {text}\nSentiment:"
    # 20 top log-probabilities (vLLM's default ceiling) hold every label's first token: the
    # answer's grammar masks all other tokens before log-probabilities are computed.
    default_sampling = {"max_tokens": 8, "logprobs": 20}
    split_mode = "aggregate"

    def __init__(self, cfg: SentimentConfig):
        super().__init__(cfg)
        self._label_ids: Optional[dict[str, int]] = None
        self._calibration: Optional[cal.Calibration] = None
        # (engine, tokenizer) ids -> the bound copy (a future while it is being measured)
        self._bound: dict[tuple[int, int], "asyncio.Future[Sentiment]"] = {}

    def params(self) -> dict[str, Any]:
        return {"labels": ", ".join(self.cfg.labels)}

    def sampling_kwargs(self) -> dict[str, Any]:
        kw = super().sampling_kwargs()
        # The label set is part of the task definition, not a tunable: keep it enforced.
        kw["structured_outputs"] = {"choice": list(self.cfg.labels)}
        return kw

    def _build_sampling_params(self):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kw = self.sampling_kwargs()
        so = StructuredOutputsParams(**kw.pop("structured_outputs"))
        return SamplingParams(structured_outputs=so, **kw)

    # -- binding to a model ---------------------------------------------------------------
    async def bind(self, engine: "EngineLike", ctx: "ExecContext") -> "Sentiment":
        """A copy that knows the model's label tokens and, with calibration on, its
        content-free label distribution (measured once per model, prompt and label set).
        Rows arriving together wait for the first one's binding."""
        if self._label_ids is not None:
            return self
        slot = (id(engine), id(ctx.tokenizer))
        loop = asyncio.get_running_loop()
        fut = self._bound.get(slot)
        if fut is not None and fut.get_loop() is loop and not (fut.done() and fut.exception() is not None):
            return await asyncio.shield(fut)
        fut = loop.create_future()
        self._bound[slot] = fut
        try:
            calibration = None
            if self.cfg.calibration == "contextual":
                calibration = await cal.calibration_for(self, engine, ctx)
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: the next row tries again
            raise
        bound = copy.copy(self)
        bound._label_ids = cal.label_token_ids(self.cfg.labels, ctx.tokenizer) or {}
        bound._calibration = calibration
        bound._bound = {}
        fut.set_result(bound)
        return bound

    @property
    def calibration(self) -> Optional[cal.Calibration]:
        return self._calibration

    def parse(self, completion: Completion) -> dict[str, Any]:
        answer = completion.text.strip()
        if answer not in self.cfg.labels:
            raise TaskOutputError(
                f"answer {completion.text!r} is not one of {self.cfg.labels} "
                f"(finish_reason={completion.finish_reason}); raise sampling.max_tokens if it was cut"
            )
        raw = cal.first_token_probabilities(completion, self._label_ids) if self._label_ids else None
        if raw is not None and self._calibration is not None:
            return self._decided(answer, raw, self._calibration.apply(raw, self.cfg.neutral_label))
        score = None
        if completion.cumulative_logprob is not None and math.isfinite(completion.cumulative_logprob):
            score = math.exp(completion.cumulative_logprob)
        return {"output_text": answer, "label": answer, "score": score, "probabilities": raw,
                "raw_label": answer, "raw_probabilities": raw}

    def _decided(self, raw_label: str, raw: dict[str, float], q: dict[str, float]) -> dict[str, Any]:
        neutral = self.cfg.neutral_label
        ratio = self._calibration.ratio(raw, neutral) if (self._calibration and neutral) else None
        label = cal.decide(q, neutral, ratio, self.cfg.neutral_threshold)
        return {"output_text": label, "label": label, "score": q[label], "probabilities": q,
                "raw_label": raw_label, "raw_probabilities": raw}

    # -- long texts ---------------------------------------------------------------------
    def label_probabilities(self, answer: dict[str, Any]) -> dict[str, float]:
        """Each label's probability in one answer: what the parts of a long text average.
        Calibrated: the calibrated probabilities. Otherwise the answer counts as certain of
        its label (the token-weighted vote measured below beat averaging raw probabilities)."""
        if self._calibration is not None and answer.get("probabilities"):
            return dict(answer["probabilities"])
        return {lab: float(lab == answer["label"]) for lab in self.cfg.labels}

    def aggregate(self, answers: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
        """The parts' label probabilities averaged, weighted by their tokens; the label is
        the most probable one and `score` its averaged probability (uncalibrated: one-hot
        probabilities, so the token-weighted vote share).

        Chosen by measurement (`python -m bench.long_docs sentiment`, bench/results/long/):
        on 49 documents of four same-label IMDB reviews (1,274 tokens on average) with
        SmolLM2-135M-Instruct and max_model_len 512, this got 81.6% right, against 61.2% for
        truncation (the head), 69.4% for the tail, 65.3% for head and tail, 77.6% for the
        unweighted vote and 79.6% for averaging the labels' raw first-token probabilities."""
        total = sum(weights)

        def mean(probs: list[Optional[dict[str, float]]]) -> Optional[dict[str, float]]:
            if any(p is None for p in probs):
                return None
            m = {lab: 0.0 for lab in self.cfg.labels}
            for p, w in zip(probs, weights):
                for lab in m:
                    m[lab] += p[lab] * w / total  # type: ignore[index]
            return m

        q = mean([self.label_probabilities(a) for a in answers])
        raw = mean([a.get("raw_probabilities") for a in answers])
        votes = raw or mean([{lab: float(lab == a["raw_label"]) for lab in self.cfg.labels} for a in answers])
        raw_label = max(self.cfg.labels, key=lambda lab: votes[lab])  # type: ignore[index]
        if self._calibration is not None and raw is not None:
            return self._decided(raw_label, raw, q)  # type: ignore[arg-type]
        label = max(self.cfg.labels, key=lambda lab: q[lab])  # ties: the first in label order
        return {"output_text": label, "label": label, "score": q[label],  # type: ignore[index]
                "probabilities": raw, "raw_label": raw_label, "raw_probabilities": raw}
