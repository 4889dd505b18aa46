"""Splitting long texts: lossless, within the token limit, at paragraph then sentence ends
(the real tiny-model tokenizer; no engine)."""

from pathlib import Path

import pytest

from pipeline.tasks.split import Document, sentences, split, token_counter

TEXT = (
    "Dr. Smith arrived at 10 a.m. on Monday. He spoke for an hour! Was it useful? Nobody knew.\n\n"
    "A second paragraph, short.\n \n\n"
    "Third one: prices rose 3.5% in 2024, e.g. in the U.S. and in France. Then they fell."
)


def test_document_round_trip_keeps_every_character():
    doc = Document.parse(TEXT)
    assert len(doc.paragraphs) == 3
    assert doc.breaks == ("\n\n", "\n \n\n")
    assert doc.join(list(doc.paragraphs)) == TEXT
    with pytest.raises(ValueError):
        doc.join(["only one"])
    assert Document.parse("one paragraph\nwith a line break").paragraphs == ("one paragraph\nwith a line break",)


def test_sentences_are_slices_that_join_back_and_respect_abbreviations():
    para = Document.parse(TEXT).paragraphs[0]
    sents = sentences(para, "en")
    assert "".join(sents) == para
    assert sents[0] == "Dr. Smith arrived at 10 a.m. on Monday. "  # "Dr." and "a.m." do not end it
    assert len(sents) == 4


def _tokens(tokenizer, text):
    return len(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("mix", [False, True])
def test_parts_fit_the_limit_and_lose_nothing(tiny_tokenizer, mix):
    paras = [" ".join(f"Sentence {j} of paragraph {i} is here." for j in range(1 + (i * 5) % 30)) for i in range(40)]
    text = "\n\n".join(paras)
    limit = 60
    parts = split(Document.parse(text), tiny_tokenizer, limit, mix_paragraphs=mix)
    assert len(parts) > 5
    for p in parts:
        assert _tokens(tiny_tokenizer, p.text) <= limit + 2, p  # counted per piece; the render re-checks
    # In order and complete: the parts cover the paragraphs in sequence, every character kept.
    assert "".join(p.text.replace("\n\n", "") for p in parts) == text.replace("\n\n", "")
    if not mix:  # translation: a part is whole paragraphs, or sentences of exactly one
        for p in parts:
            assert p.whole or len(p.paragraphs) == 1
            if p.whole:
                assert p.text == "\n\n".join(paras[i] for i in p.paragraphs)


def test_packing_fills_parts_with_whole_paragraphs(tiny_tokenizer):
    paras = [f"Short paragraph number {i}." for i in range(30)]
    parts = split(Document.parse("\n\n".join(paras)), tiny_tokenizer, 100)
    count = token_counter(tiny_tokenizer)
    assert all(p.whole for p in parts) and len(parts) < 30 / 2
    # Greedy: a part could not have taken its successor's first paragraph too.
    for a, b in zip(parts, parts[1:]):
        assert count([a.text + "\n\n" + paras[b.paragraphs[0]]])[0] > 100 - 2


def test_a_sentence_longer_than_the_limit_is_cut_between_tokens(tiny_tokenizer):
    run_on = " ".join(f"word{i}" for i in range(400))  # no sentence end at all
    parts = split(Document.parse(run_on), tiny_tokenizer, 50)
    assert len(parts) > 4 and "".join(p.text for p in parts) == run_on
    assert all(not p.whole and p.paragraphs == (0,) for p in parts)
    assert max(_tokens(tiny_tokenizer, p.text) for p in parts) <= 52


def test_blank_edges_send_nothing(tiny_tokenizer):
    parts = split(Document.parse("\n\n  \n\nOnly text.\n\n"), tiny_tokenizer, 50)
    assert [p.text for p in parts] == ["Only text."]



SMOLLM2 = Path.home() / ".cache" / "pipeline" / "models" / "SmolLM2-135M-Instruct"


@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.smollm2)])
def any_tokenizer(request, tiny_tokenizer):
    if request.param == "tiny":
        return tiny_tokenizer
    if not (SMOLLM2 / "tokenizer.json").exists():
        pytest.skip("the default model is not prepared (pipeline models pull)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(SMOLLM2))


def test_parts_of_many_short_paragraphs_are_within_the_limit_as_sent(any_tokenizer):
    # The map-reduce case: a level's summaries, one short paragraph each, packed to the
    # limit. SmolLM2's tokenizer takes "\n\n" alone as one token but, after a word, as two:
    # with each break counted alone, a part of 20 summaries came out about 10 tokens over,
    # and the render check could not shrink it back in four tries (a failed map-reduce
    # summary in CI: "could not split the text into parts of at most 451 prompt tokens").
    paras = [f"Summary {i} says the council voted on the plan" + ("." if i % 2 else "") for i in range(60)]
    text = "\n\n".join(paras)
    for limit in (60, 100, 150):
        parts = split(Document.parse(text), any_tokenizer, limit, mix_paragraphs=True)
        assert len(parts) > 2
        for p in parts:
            sent = _tokens(any_tokenizer, p.text)
            assert sent <= limit, (limit, p.tokens, sent)
            assert p.tokens >= sent - 1  # what packing counted is what is sent
