"""Standard metrics from the libraries papers use, and quality signals that need no reference.

Every scorer computes its per-row material once (the expensive part: ROUGE per pair,
sacrebleu's sufficient statistics per sentence) and then gives the corpus figure over any
subset of rows with `aggregate(idx)`, so a bootstrap can resample rows cheaply and still
get each figure from the library:

    sentiment       accuracy, macro_f1           scikit-learn (accuracy_score, f1_score)
    summarization   rouge1, rouge2, rougeL       rouge-score: Porter stemming, F-measure, mean over rows, x100
    translation     chrf, bleu                   sacrebleu: corpus-level (statistics summed over rows), 0-100
    any task        truncated, empty, repetitive shares of outputs, seq-rep-4 (reference-free)

Fractions (accuracy, F1, shares) are on 0-1, the text-overlap scores on 0-100, as papers
report them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
FAILED = "(failed)"  # the prediction of a row whose task failed (an error record): never right

# A repeated word n-gram of this length marks an output that repeats itself. On SmolLM2's 50
# XSum summaries, 4-grams also flagged names said twice ("the National Portrait Gallery");
# 6-grams flagged 14, each a copied clause or sentence ("has been charged with driving while
# disqualified ... has also been charged with driving while disqualified"). None of the 50
# reference summaries has a repeated 4-gram.
REPEAT_N = 6
SEQ_REP_N = 4  # seq-rep-4, as Welleck et al. report it
_WORD = re.compile(r"\w+")


class Scorer(Protocol):
    """Per-row material for one task's metrics; corpus figures over any subset of rows."""

    n: int

    def aggregate(self, idx: np.ndarray) -> dict[str, float]: ...


def _all(n: int) -> np.ndarray:
    return np.arange(n)


# -- sentiment ----------------------------------------------------------------------------
def normalize_label(value: Optional[str], label_map: Optional[dict[str, str]] = None) -> str:
    """Gold or predicted label, mapped (gold '1' -> 'positive') and case-folded."""
    if value is None:
        return FAILED
    v = value.strip()
    v = (label_map or {}).get(v, v)
    return v.strip().lower()


@dataclass
class SentimentScorer:
    """Accuracy and macro-F1 (scikit-learn). Macro-F1 averages over the gold classes of the
    whole set (fixed, so a resample that misses a class keeps the same definition); a
    predicted label outside them (e.g. 'neutral' on a binary set) only counts as a miss."""

    gold: np.ndarray
    pred: np.ndarray
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gold = np.asarray(self.gold, dtype=object)
        self.pred = np.asarray(self.pred, dtype=object)
        if not self.classes:
            self.classes = sorted(set(self.gold.tolist()))
        # Integer codes: scikit-learn checks string labels slowly, and a bootstrap calls it
        # a thousand times. Same metric either way.
        names = self.classes + sorted(set(self.pred.tolist()) - set(self.classes))
        code = {v: i for i, v in enumerate(names)}
        self._g = np.asarray([code[v] for v in self.gold.tolist()], dtype=np.int64)
        self._p = np.asarray([code[v] for v in self.pred.tolist()], dtype=np.int64)
        self._class_codes = list(range(len(self.classes)))

    @property
    def n(self) -> int:
        return len(self.gold)

    def aggregate(self, idx: np.ndarray) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        g, p = self._g[idx], self._p[idx]
        return {
            "accuracy": float(accuracy_score(g, p)),
            "macro_f1": float(f1_score(g, p, labels=self._class_codes, average="macro", zero_division=0)),
        }

    def confusion(self) -> dict[str, object]:
        """Rows: gold label; columns: predicted label (gold classes first, then others seen)."""
        from sklearn.metrics import confusion_matrix

        extra = sorted(set(self.pred.tolist()) - set(self.classes))
        labels = self.classes + extra
        m = confusion_matrix(self.gold.tolist(), self.pred.tolist(), labels=labels)
        return {"gold": self.classes, "predicted": labels, "matrix": m[: len(self.classes)].tolist()}

    def predicted_distribution(self) -> dict[str, int]:
        values, counts = np.unique(self.pred.astype(str), return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts)}


# -- summarization ------------------------------------------------------------------------
@dataclass
class RougeScorer:
    """ROUGE-1/2/L F-measure per row (rouge-score, Porter stemmer on), averaged over rows."""

    f: np.ndarray  # (rows, 3) F-measures on 0-1, columns in ROUGE_TYPES order

    @classmethod
    def score(cls, predictions: Sequence[str], references: Sequence[str]) -> "RougeScorer":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
        rows = []
        for pred, ref in zip(predictions, references, strict=True):
            s = scorer.score(ref, pred)  # (target, prediction)
            rows.append([s[t].fmeasure for t in ROUGE_TYPES])
        return cls(np.asarray(rows, dtype=float).reshape(-1, len(ROUGE_TYPES)))

    @property
    def n(self) -> int:
        return len(self.f)

    def aggregate(self, idx: np.ndarray) -> dict[str, float]:
        means = self.f[idx].mean(axis=0) * 100 if len(idx) else np.full(len(ROUGE_TYPES), np.nan)
        return {t: float(v) for t, v in zip(ROUGE_TYPES, means)}


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")


def lead_sentence(text: str) -> str:
    """The text's first sentence: the lead baseline of summarization (the 'LEAD' rows of
    XSum and CNN/DailyMail papers). BBC articles put one sentence per line; within a line
    a sentence ends at . ! or ? followed by space and a capital (no sentence splitter
    model can be downloaded here; this rule is what those papers' simple baselines use)."""
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            return _SENTENCE_END.split(line, maxsplit=1)[0].strip()
    return ""


# -- translation --------------------------------------------------------------------------
@dataclass
class TranslationScorer:
    """chrF and BLEU, corpus-level (sacrebleu defaults: chrF with character 6-grams and
    beta 2; BLEU 4-grams, '13a' tokenization). sacrebleu's corpus score sums per-sentence
    statistics; keeping those per row lets a resample be scored exactly as sacrebleu's own
    paired bootstrap does (`sacrebleu.significance`)."""

    chrf_stats: np.ndarray
    bleu_stats: np.ndarray

    @classmethod
    def score(cls, predictions: Sequence[str], references: Sequence[str]) -> "TranslationScorer":
        preds, refs = list(predictions), list(references)
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
        chrf, bleu = _sacrebleu_metrics()
        if not preds:
            return cls(np.zeros((0, 1)), np.zeros((0, 1)))
        return cls(
            np.asarray(chrf._extract_corpus_statistics(preds, [refs]), dtype=float),
            np.asarray(bleu._extract_corpus_statistics(preds, [refs]), dtype=float),
        )

    @property
    def n(self) -> int:
        return len(self.chrf_stats)

    def aggregate(self, idx: np.ndarray) -> dict[str, float]:
        if not len(idx):
            return {"chrf": float("nan"), "bleu": float("nan")}
        chrf, bleu = _sacrebleu_metrics()
        return {
            "chrf": float(chrf._compute_score_from_stats(self.chrf_stats[idx].sum(0)).score),
            "bleu": float(bleu._compute_score_from_stats(self.bleu_stats[idx].sum(0).astype(int).tolist()).score),
        }


def _sacrebleu_metrics():
    from sacrebleu.metrics import BLEU, CHRF

    return CHRF(), BLEU()


# -- quality signals without references ---------------------------------------------------
def repeats_itself(text: str, n: int = REPEAT_N) -> bool:
    """True if some word n-gram occurs more than once in the text (case-folded)."""
    words = _WORD.findall(text.lower())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        g = tuple(words[i : i + n])
        if g in seen:
            return True
        seen.add(g)
    return False


def seq_rep(text: str, n: int = SEQ_REP_N) -> float:
    """seq-rep-n (Welleck et al. 2020): 1 - distinct n-grams / n-grams in one output; 0 when
    nothing repeats, near 1 for a loop."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class QualityScorer:
    """Per-row quality signals; NaN for a row without output (its task failed), so each share
    is over the outputs there are. `repetitive` is left out for sentiment (one word)."""

    truncated: np.ndarray
    empty: np.ndarray
    repetitive: Optional[np.ndarray] = None
    rep: Optional[np.ndarray] = None

    @classmethod
    def score(cls, texts: Sequence[Optional[str]], finish_reasons: Sequence[Optional[str]],
              repetition: bool = True) -> "QualityScorer":
        nan = float("nan")
        trunc = [nan if t is None else float(f == "length") for t, f in zip(texts, finish_reasons, strict=True)]
        empty = [nan if t is None else float(not t.strip()) for t in texts]
        rep = reps = None
        if repetition:
            rep = np.asarray([nan if t is None else float(repeats_itself(t)) for t in texts], dtype=float)
            reps = np.asarray([nan if t is None else seq_rep(t) for t in texts], dtype=float)
        return cls(np.asarray(trunc, dtype=float), np.asarray(empty, dtype=float), rep, reps)

    @property
    def n(self) -> int:
        return len(self.truncated)

    def aggregate(self, idx: np.ndarray) -> dict[str, float]:
        out = {"truncated": _nanmean(self.truncated[idx]), "empty": _nanmean(self.empty[idx])}
        if self.repetitive is not None and self.rep is not None:
            out["repetitive"] = _nanmean(self.repetitive[idx])
            out[f"seq_rep_{SEQ_REP_N}"] = _nanmean(self.rep[idx])
        return out

    def totals(self) -> dict[str, float]:
        """Sums that add up across files: outputs, rows truncated / empty / repeating, seq-rep."""
        c: dict[str, float] = {"outputs": int(np.sum(~np.isnan(self.truncated))),
                               "truncated": int(np.nansum(self.truncated)), "empty": int(np.nansum(self.empty))}
        if self.repetitive is not None and self.rep is not None:
            c["repetition_checked"] = int(np.sum(~np.isnan(self.repetitive)))
            c["repetitive"] = int(np.nansum(self.repetitive))
            c["seq_rep_sum"] = float(np.nansum(self.rep))
        return c


def quality_summary(totals: dict[str, float]) -> dict[str, object]:
    """{outputs, truncated, empty[, repetitive]} as counts, each with its share (`*_share`),
    and the mean seq-rep-n: the shape of every quality report. Repetition shares are over
    the outputs checked for it (`repetition_checked`: all of them, or a sample)."""
    n = int(totals.get("outputs", 0))
    out: dict[str, object] = {"outputs": n}
    for k in ("truncated", "empty"):
        out[k] = int(totals.get(k, 0))
        out[f"{k}_share"] = round(totals.get(k, 0) / n, 4) if n else None
    if "repetitive" in totals:
        checked = int(totals.get("repetition_checked", n))
        out["repetition_checked"] = checked
        out["repetitive"] = int(totals["repetitive"])
        out["repetitive_share"] = round(totals["repetitive"] / checked, 4) if checked else None
        out[f"seq_rep_{SEQ_REP_N}"] = round(totals["seq_rep_sum"] / checked, 4) if checked else None
    return out


def _nanmean(a: np.ndarray) -> float:
    a = a[~np.isnan(a)]
    return float(a.mean()) if len(a) else float("nan")


# Which metrics are better higher (all reference metrics) or lower (the quality signals).
LOWER_IS_BETTER = frozenset({"truncated", "empty", "repetitive", f"seq_rep_{SEQ_REP_N}"})


@dataclass
class Combined:
    """Several scorers over the same rows, as one (reference metrics + quality signals)."""

    parts: list

    @property
    def n(self) -> int:
        return self.parts[0].n

    def aggregate(self, idx: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for p in self.parts:
            out.update(p.aggregate(idx))
        return out
