"""Metric values on tiny hand-checked examples: ours equal the libraries' own results and the
values worked out by hand; the paired bootstrap calls a clear difference significant and a
negligible one not."""

import json

import numpy as np
import pytest

from pipeline.eval import metrics as M
from pipeline.eval.compare import paired_bootstrap


def all_rows(scorer):
    return scorer.aggregate(np.arange(scorer.n))


def test_sentiment_accuracy_macro_f1_and_confusion_match_sklearn_and_hand_values():
    from sklearn.metrics import accuracy_score, f1_score

    gold = ["positive", "positive", "negative", "negative"]
    pred = ["positive", "negative", "negative", "negative"]
    s = all_rows(M.SentimentScorer(gold, pred))
    # By hand: 3 of 4 right; F1(positive) = 2*1*0.5/1.5 = 2/3, F1(negative) = 2*(2/3)*1/(5/3) = 0.8.
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert s["accuracy"] == accuracy_score(gold, pred)
    assert s["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    c = M.SentimentScorer(gold, pred).confusion()
    assert c == {"gold": ["negative", "positive"], "predicted": ["negative", "positive"], "matrix": [[2, 0], [1, 1]]}


def test_sentiment_label_map_failed_rows_and_labels_outside_gold():
    gold = [M.normalize_label(v, {"1": "positive", "0": "negative"}) for v in ["1", "0", "1", "0", " Positive "]]
    assert gold == ["positive", "negative", "positive", "negative", "positive"]
    pred = [M.normalize_label(v) for v in ["Positive", "neutral", None, "negative", "positive"]]
    sc = M.SentimentScorer(gold, pred)
    s = all_rows(sc)
    assert s["accuracy"] == pytest.approx(3 / 5)  # 'neutral' and the failed row are misses
    # Macro-F1 over the gold classes only: positive P=1 R=2/3, negative P=1 R=1/2.
    assert s["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    c = sc.confusion()
    assert c["predicted"] == ["negative", "positive", M.FAILED, "neutral"]
    assert c["matrix"] == [[1, 0, 0, 1], [0, 2, 1, 0]]


def test_rouge_matches_rouge_score_and_hand_values():
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "cats running"]
    refs = ["the cat is on the mat", "cat runs"]
    r = M.RougeScorer.score(preds, refs)
    # Pair 1 by hand: 5 of 6 unigrams shared (P = R = F = 5/6), 3 of 5 bigrams (0.6), LCS 5 of 6.
    assert r.f[0] == pytest.approx([5 / 6, 0.6, 5 / 6])
    # Pair 2: identical after Porter stemming (cats -> cat, running/runs -> run): stemming is on.
    assert r.f[1] == pytest.approx([1.0, 1.0, 1.0])
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, (p, ref) in enumerate(zip(preds, refs)):
        s = lib.score(ref, p)
        assert r.f[i] == pytest.approx([s["rouge1"].fmeasure, s["rouge2"].fmeasure, s["rougeL"].fmeasure])
    agg = all_rows(r)
    assert agg["rouge1"] == pytest.approx(100 * (5 / 6 + 1) / 2)
    assert agg["rouge2"] == pytest.approx(80.0)


def test_chrf_and_bleu_equal_sacrebleu_corpus_scores_on_any_subset():
    import sacrebleu

    preds = ["le chat est sur le tapis", "bonjour", "il pleut beaucoup aujourd'hui", "", "la maison bleue"]
    refs = ["le chat est sur le tapis", "bonjour tout le monde", "il pleut fort aujourd'hui", "merci", "la maison est bleue"]
    t = M.TranslationScorer.score(preds, refs)
    for idx in (np.arange(5), np.array([0, 0, 2, 4]), np.array([1, 3])):
        got = t.aggregate(idx)
        p, r = [preds[i] for i in idx], [refs[i] for i in idx]
        assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(p, [r]).score)
        assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(p, [r]).score)
    same = M.TranslationScorer.score(["un deux trois quatre cinq"], ["un deux trois quatre cinq"])
    assert all_rows(same) == {"chrf": pytest.approx(100.0), "bleu": pytest.approx(100.0)}


def test_quality_signals_and_repetition():
    assert M.repeats_itself("The man was charged with theft. The man was charged with theft again.")
    assert not M.repeats_itself("The National Portrait Gallery said the National Portrait Gallery reopens.")
    assert M.repeats_itself("the film is a film is a film", n=4)
    # 8 words, five 4-grams, one of them repeated: seq-rep-4 = 1 - 4/5.
    assert M.seq_rep("the film is a film is a film") == pytest.approx(0.2)
    q = M.QualityScorer.score(["a b c d e f a b c d e f", "  ", None, "fine"], ["length", "stop", None, "stop"])
    s = M.quality_summary(q.totals())
    # The failed row (None) is not an output: shares are over the 3 outputs.
    assert s["outputs"] == 3
    assert (s["truncated"], s["empty"], s["repetitive"]) == (1, 1, 1)
    assert s["truncated_share"] == pytest.approx(1 / 3, abs=1e-4)
    no_rep = M.QualityScorer.score(["positive"], ["stop"], repetition=False)
    assert "repetitive" not in M.quality_summary(no_rep.totals())


def test_lead_sentence():
    assert M.lead_sentence("\nFirst one here. Second one.\nThird line.") == "First one here."
    assert M.lead_sentence('He said "No." Then he left.') == 'He said "No."'
    assert M.lead_sentence("The U.S. team won on Friday. It rained.") == "The U.S. team won on Friday."
    assert M.lead_sentence("") == ""


def test_bootstrap_calls_a_clear_difference_significant():
    rng = np.random.default_rng(1)
    n = 200
    gold = np.array(["positive", "negative"] * (n // 2))
    a_pred = gold.copy()
    a_pred[rng.random(n) < 0.5] = "negative"  # about 75% right
    b_pred = gold.copy()
    b_pred[rng.random(n) < 0.05] = "neutral"  # about 95% right
    a, b = M.SentimentScorer(gold, a_pred), M.SentimentScorer(gold, b_pred)
    diffs = {d.metric: d for d in paired_bootstrap(a, b, resamples=300, seed=0)}
    acc = diffs["accuracy"]
    assert acc.diff == pytest.approx(all_rows(b)["accuracy"] - all_rows(a)["accuracy"])
    assert acc.diff > 0.1 and acc.ci_low > 0 and acc.significant and acc.better == "b"
    assert acc.ci_low <= acc.diff <= acc.ci_high
    assert diffs["macro_f1"].significant
    json.dumps([d.as_dict() for d in diffs.values()])  # plain Python types, ready for the JSON report
    # Same seed, same intervals.
    again = {d.metric: d for d in paired_bootstrap(a, b, resamples=300, seed=0)}
    assert again["accuracy"] == acc


def test_bootstrap_does_not_call_a_negligible_difference_significant():
    n = 200
    gold = np.array(["positive", "negative"] * (n // 2))
    a_pred = gold.copy()
    a_pred[::5] = "negative"  # 80% right
    b_pred = a_pred.copy()
    b_pred[0] = "positive"  # one row more right: +0.005
    b_pred[3] = "positive"  # one row more wrong: back to the same accuracy
    b_pred[10] = "positive"  # and one more right: +0.005 in all
    d = {x.metric: x for x in paired_bootstrap(M.SentimentScorer(gold, a_pred), M.SentimentScorer(gold, b_pred),
                                              resamples=300, seed=0)}["accuracy"]
    assert d.diff == pytest.approx(0.005)
    assert d.ci_low < 0 < d.ci_high and not d.significant and d.better is None


def test_bootstrap_on_rouge_and_lower_is_better_signals():
    refs = ["the council approved the new budget on tuesday"] * 60
    good = ["the council approved the budget on tuesday"] * 60
    bad = ["a storm hit the coast overnight"] * 60
    a = M.Combined([M.RougeScorer.score(bad, refs), M.QualityScorer.score(bad, ["length"] * 60)])
    b = M.Combined([M.RougeScorer.score(good, refs), M.QualityScorer.score(good, ["stop"] * 60)])
    d = {x.metric: x for x in paired_bootstrap(a, b, resamples=200, seed=0)}
    assert d["rougeL"].significant and d["rougeL"].better == "b"
    assert d["truncated"].diff == pytest.approx(-1.0) and d["truncated"].better == "b"  # fewer cut: B better
    assert not d["empty"].significant
