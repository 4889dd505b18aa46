"""Contextual calibration (pipeline/tasks/calibration.py): the math by hand, and the binding
in execute() on a fake engine that returns first-token log-probabilities.

The fake engine stands in for vLLM so that the lean, the content-free answers and the
cache are set exactly; tests/engine/test_engine.py runs calibration on the real model.
"""

import asyncio
import json
import math

import pytest

from pipeline.config import TasksConfig
from pipeline.engine.outputs import Completion, Generation
from pipeline.tasks import build_tasks
from pipeline.tasks import calibration as cal
from pipeline.tasks.execute import ExecContext, execute


def test_calibrate_divides_by_the_content_free_distribution():
    # Hand-worked: raw (0.6, 0.3, 0.1), p_cf (0.6, 0.2, 0.2) -> (1.0, 1.5, 0.5) / 3.0
    q = cal.calibrate({"pos": 0.6, "neg": 0.3, "neu": 0.1}, {"pos": 0.6, "neg": 0.2, "neu": 0.2})
    assert q == pytest.approx({"pos": 1 / 3, "neg": 0.5, "neu": 1 / 6})
    assert sum(q.values()) == pytest.approx(1.0)
    # A uniform p_cf changes nothing; a zero never divides.
    raw = {"a": 0.7, "b": 0.3}
    assert cal.calibrate(raw, {"a": 0.5, "b": 0.5}) == pytest.approx(raw)
    assert cal.calibrate(raw, {"a": 0.0, "b": 1.0})["a"] > 0.99


def test_mean_of_content_free_distributions_is_renormalised():
    m = cal.mean_distribution([{"a": 0.9, "b": 0.1}, {"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}])
    assert m == pytest.approx({"a": 0.7, "b": 0.3})


def test_neutral_keeps_its_raw_probability_and_the_others_are_calibrated():
    raw = {"positive": 0.5, "negative": 0.4, "neutral": 0.1}
    p_cf = {"positive": 0.5, "negative": 0.25, "neutral": 0.25}
    q = cal.calibrate_with_neutral(raw, p_cf, "neutral")
    # positive, negative calibrated among themselves: (1.0, 1.6) / 2.6, sharing 0.9
    assert q == pytest.approx({"positive": 0.9 / 2.6, "negative": 0.9 * 1.6 / 2.6, "neutral": 0.1})
    assert sum(q.values()) == pytest.approx(1.0)
    # Without a neutral label (or with two labels), all labels are calibrated.
    assert cal.calibrate_with_neutral(raw, p_cf, None) == pytest.approx(cal.calibrate(raw, p_cf))


def test_decide_and_the_neutral_threshold():
    q = {"positive": 0.45, "negative": 0.35, "neutral": 0.20}
    assert cal.decide(q) == "positive"
    assert cal.decide(q, "neutral", neutral_ratio=3.5, threshold=3.0) == "neutral"  # 3.5x its content-free probability
    assert cal.decide(q, "neutral", neutral_ratio=2.0, threshold=3.0) == "positive"
    assert cal.decide(q, "neutral", neutral_ratio=3.5, threshold=None) == "positive"  # no threshold: the argmax
    assert cal.decide(q, None, neutral_ratio=3.5, threshold=3.0) == "positive"  # no neutral label
    assert cal.decide({"positive": 0.2, "negative": 0.2, "neutral": 0.6}, "neutral", 1.0, 3.0) == "neutral"


def test_first_token_probabilities_from_top_logprobs():
    ids = {"positive": 11, "negative": 12, "neutral": 13}
    c = Completion("positive", (11,), "stop", math.log(0.5),
                   ({11: math.log(0.5), 12: math.log(0.3), 99: math.log(0.1)},))
    p = cal.first_token_probabilities(c, ids)
    assert p["positive"] == pytest.approx(0.5 / 0.8, rel=1e-4)
    assert p["negative"] == pytest.approx(0.3 / 0.8, rel=1e-4) and p["neutral"] < 1e-5
    assert cal.first_token_probabilities(Completion("positive", (11,), "stop"), ids) is None


# -- bound in execute() -------------------------------------------------------------------
# The tiny test tokenizer starts "negative" and "neutral" with the same token, which
# first-token scores cannot tell apart: the third label here is "mixed".
LABELS = ["positive", "negative", "mixed"]


class LeaningEngine:
    """Answers every prompt with label probabilities at the first token: content-free
    prompts lean (0.7, 0.2, 0.1); a text's own probabilities come from `probs(text)`."""

    def __init__(self, tokenizer, probs, model_path=None):
        self.tok = tokenizer
        self.probs = probs
        self.ids = cal.label_token_ids(LABELS, tokenizer)
        assert self.ids is not None
        self.asked: list[str] = []
        if model_path is not None:
            self.model_path = model_path

    async def agenerate(self, prompt, params, priority=0):
        text = self.tok.decode(prompt).split("Text:")[-1].split("Sentiment:")[0].strip()
        self.asked.append(text)
        await asyncio.sleep(0.001)  # let concurrent rows interleave
        p = {"positive": 0.7, "negative": 0.2, "mixed": 0.1} if text in ("N/A", "", "[MASK]") else self.probs(text)
        top = {self.ids[lab]: math.log(v) for lab, v in p.items()}
        answer = max(p, key=p.get)
        return Generation(Completion(answer, (self.ids[answer],), "stop", math.log(p[answer]), (top,)), len(prompt))


def sentiment(**cfg):
    cfg = {"labels": LABELS, "neutral_label": "mixed", **cfg}
    (task,) = build_tasks(TasksConfig.model_validate({"sentiment": cfg}))
    return task


@pytest.fixture
def ctx(tiny_tokenizer):
    return ExecContext(tiny_tokenizer, max_model_len=1024, context_policy="reject")


def run_rows(task, texts, engine, ctx):
    async def go():
        return await asyncio.gather(*[execute(task, t, engine, ctx) for t in texts])

    return asyncio.run(go())


def test_calibration_flips_the_lean_and_is_measured_once(ctx, tiny_tokenizer):
    # Every text is 0.55 positive raw: the model's lean, not the text. Calibrated, a text
    # that is less positive than the content-free inputs comes out negative.
    engine = LeaningEngine(tiny_tokenizer, lambda t: {"positive": 0.55, "negative": 0.35, "mixed": 0.10})
    task = sentiment()
    results = run_rows(task, [f"review {i}" for i in range(8)], engine, ctx)
    assert sorted(engine.asked[:3]) == sorted(["N/A", "", "[MASK]"])
    assert len(engine.asked) == 3 + 8  # three content-free requests for all eight rows
    for r in results:
        c = r.columns
        assert r.ok and c["raw_label"] == "positive" and c["label"] == c["output_text"] == "negative"
        assert c["raw_probabilities"] == pytest.approx({"positive": 0.55, "negative": 0.35, "mixed": 0.10}, abs=1e-4)
        # positive, negative: (0.55/0.7, 0.35/0.2) renormalised, sharing 0.9; mixed (neutral) stays raw
        z = 0.55 / 0.7 + 0.35 / 0.2
        assert c["probabilities"] == pytest.approx({"positive": 0.9 * 0.55 / 0.7 / z, "negative": 0.9 * 1.75 / z, "mixed": 0.1}, abs=1e-4)
        assert c["score"] == pytest.approx(c["probabilities"]["negative"])
        assert sum(c["probabilities"].values()) == pytest.approx(1.0)
    # The columns fit the task's dataset schema (maps of label -> probability).
    import pyarrow as pa

    rows = [{**r.columns, "row_id": str(i)} for i, r in enumerate(results)]
    assert pa.Table.from_pylist(rows, schema=task.schema()).num_rows == 8


def test_neutral_threshold_and_calibration_off(ctx, tiny_tokenizer):
    probs = lambda t: {"positive": 0.59, "negative": 0.1, "mixed": 0.31}  # noqa: E731
    # "mixed" (the neutral label here) at 3.1x its content-free probability (0.1): neutral at
    # the default threshold 3, though positive is the most probable label.
    (r,) = run_rows(sentiment(), ["so-so"], LeaningEngine(tiny_tokenizer, probs), ctx)
    assert r.columns["label"] == "mixed" and r.columns["raw_label"] == "positive"
    z = 0.59 / 0.7 + 0.1 / 0.2
    assert r.columns["probabilities"] == pytest.approx({"positive": 0.69 * 0.59 / 0.7 / z, "negative": 0.69 * 0.5 / z, "mixed": 0.31}, abs=1e-4)
    for threshold in (4.0, None):
        (r,) = run_rows(sentiment(neutral_threshold=threshold), ["so-so"], LeaningEngine(tiny_tokenizer, probs), ctx)
        assert r.columns["label"] == "positive"
    off = LeaningEngine(tiny_tokenizer, probs)
    (r,) = run_rows(sentiment(calibration="off"), ["so-so"], off, ctx)
    assert off.asked == ["so-so"]  # nothing measured
    assert r.columns["label"] == "positive" and r.columns["score"] == pytest.approx(0.59)
    assert r.columns["raw_probabilities"]["mixed"] == pytest.approx(0.31, abs=1e-4)


def test_calibration_is_cached_on_disk_per_model_and_prompt(ctx, tiny_tokenizer, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path))
    probs = lambda t: {"positive": 0.6, "negative": 0.3, "mixed": 0.1}  # noqa: E731
    first = LeaningEngine(tiny_tokenizer, probs, model_path=str(tiny_model))
    (a,) = run_rows(sentiment(), ["x"], first, ctx)
    files = list((tmp_path / "calibration").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["content_free"] == pytest.approx([0.7, 0.2, 0.1], abs=1e-4)
    # Another engine (an actor, a Serve replica) of the same model and prompt asks nothing more.
    second = LeaningEngine(tiny_tokenizer, probs, model_path=str(tiny_model))
    (b,) = run_rows(sentiment(), ["x"], second, ctx)
    assert second.asked == ["x"] and b.columns == a.columns
    # Another prompt is another calibration.
    third = LeaningEngine(tiny_tokenizer, probs, model_path=str(tiny_model))
    run_rows(sentiment(prompt={"user": "Review. Text: {text}\nSentiment:"}), ["x"], third, ctx)
    assert len(third.asked) == 4 and len(list((tmp_path / "calibration").glob("*.json"))) == 2


def test_long_text_parts_average_calibrated_probabilities(ctx, tiny_tokenizer):
    engine = LeaningEngine(tiny_tokenizer, lambda t: {"positive": 0.6, "negative": 0.3, "mixed": 0.1})
    small = ExecContext(tiny_tokenizer, max_model_len=128, context_policy="split")
    text = "\n\n".join(f"Paragraph {i} says a few words about the film and its cast." for i in range(30))
    (r,) = run_rows(sentiment(), [text], engine, small)
    c = r.columns
    assert r.ok and c["parts"] > 1
    assert c["raw_label"] == "positive" and c["label"] == "negative"  # 0.6/0.7 < 0.3/0.2
    assert sum(c["probabilities"].values()) == pytest.approx(1.0)
