"""Two variants over the same rows: per-metric difference and a paired bootstrap interval.

Paired bootstrap (Koehn 2004; Efron & Tibshirani's percentile interval): draw the row
indices with replacement, score both variants on the *same* draw, and take the 2.5th and
97.5th percentiles of the differences B - A over the draws. The difference is called
significant at 95% when that interval excludes zero. Each draw's figures come from the
scorers' `aggregate` (the libraries' own metrics); numpy only draws the indices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from pipeline.eval.metrics import LOWER_IS_BETTER, Scorer

RESAMPLES = 1000
SEED = 0


@dataclass(frozen=True)
class Difference:
    metric: str
    a: float
    b: float
    diff: float  # b - a
    ci_low: float
    ci_high: float
    significant: bool  # the 95% interval excludes 0
    better: Optional[str]  # "a" or "b" when significant, else None

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def paired_bootstrap(a: Scorer, b: Scorer, resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = 0.95) -> list[Difference]:
    """Differences B - A of every metric both scorers give, over rows aligned by position."""
    if a.n != b.n:
        raise ValueError(f"the variants are scored on different rows ({a.n} vs {b.n}); align them first")
    n = a.n
    full = np.arange(n)
    base_a, base_b = a.aggregate(full), b.aggregate(full)
    metrics = [m for m in base_a if m in base_b]
    if n == 0:
        return [Difference(m, base_a[m], base_b[m], float("nan"), float("nan"), float("nan"), False, None) for m in metrics]
    rng = np.random.default_rng(seed)
    diffs = np.empty((resamples, len(metrics)))
    for r in range(resamples):
        idx = rng.integers(0, n, size=n)
        ra, rb = a.aggregate(idx), b.aggregate(idx)
        diffs[r] = [rb[m] - ra[m] for m in metrics]
    tail = (1 - confidence) / 2 * 100
    out = []
    for j, m in enumerate(metrics):
        col = diffs[:, j]
        col = col[~np.isnan(col)]
        lo, hi = (np.percentile(col, [tail, 100 - tail]) if len(col) else (float("nan"), float("nan")))
        d = base_b[m] - base_a[m]
        sig = bool(len(col)) and bool(lo > 0 or hi < 0)
        better = None
        if sig:
            b_higher = d > 0
            better = ("a" if b_higher else "b") if m in LOWER_IS_BETTER else ("b" if b_higher else "a")
        out.append(Difference(m, base_a[m], base_b[m], float(d), float(lo), float(hi), sig, better))
    return out
