"""Intervals for the gates: a gate passes only when the unfavourable end of its 95 % interval is inside
the limit, so a pass means "at most this much worse, with confidence", not "this much worse on this
sample".

- Task metrics (STS Spearman): a paired bootstrap. The same resampled rows score FP32 and the candidate,
  so the drop's interval reflects how the two models disagree, not how hard the rows are. 1,000 seeded
  resamples, vectorised: ranks of a (B, n) matrix (counted, not sorted: `resampled_ranks`) and row-wise
  Pearson correlation of ranks.
- Agreement rates (neighbour agreement): the Wilson score interval (Wilson 1927), which stays inside
  [0, 1] and is sane at rates near 1, where the normal approximation is not.
- Tails (rows whose cosine falls below a floor, whose probability moves past a ceiling): the share of rows
  beyond, with its Wilson interval. The sample's worst row is no bound on unseen rows (the extreme of n
  rows keeps growing with n), but each new row from the same distribution is beyond with probability p,
  and the interval's upper end bounds p: distribution-free, like a quantile's order-statistic bound.
  Judged by that upper end, a pass reads "at most this share of new rows are beyond, with 95 %
  confidence" (one-sided it is a 97.5 % bound). tests/unit/test_stats.py checks it by simulation.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 1000
SEED = 20261124
Z95 = 1.959963984540054


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement; seeded, so a run is reproducible."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=-1, method="average")


def resampled_ranks(x: np.ndarray, idx: np.ndarray, chunk: int = 250) -> np.ndarray:
    """`rankdata(x[idx], axis=-1, method="average")`, the same numbers, without sorting every resample: x's
    distinct values are sorted once, each resample counts how often it drew each of them, and a value's
    average rank is the count below it plus (its count + 1) / 2 (one ranking of (2000, 1436) resamples:
    0.71 -> 0.17 s; STS-B dev's metric and six slices: 1.80 -> 0.16 CPU-s). `chunk` resamples at a time
    bound the memory to about rankdata's own. With a NaN in x, scipy's (every rank of a row that drew it
    is NaN)."""
    if np.isnan(x).any():
        return _ranks(x[idx])
    distinct, group = np.unique(x, return_inverse=True)
    out = np.empty(idx.shape, dtype=np.float64)
    for start in range(0, len(idx), chunk):
        codes = group[idx[start : start + chunk]]
        rows = len(codes)
        offsets = (np.arange(rows) * len(distinct))[:, None]
        counts = np.bincount((codes + offsets).ravel(), minlength=rows * len(distinct))
        counts = counts.reshape(rows, len(distinct))
        average = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2.0
        out[start : start + chunk] = np.take_along_axis(average, codes, axis=1)
    return out


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=-1) / denom, np.nan)


def spearman_resampled(gold: np.ndarray, scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman's rho of (gold, scores) on every resample of `idx` (shape (B, n)); NaN where constant."""
    return _pearson_rows(resampled_ranks(gold, idx), resampled_ranks(scores, idx))


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if len(finite) < len(samples) * 0.9:  # too many degenerate resamples: no interval
        return (math.nan, math.nan)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return (float(lo), float(hi))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def share_beyond(values: np.ndarray, threshold: float, below: bool) -> tuple[float, tuple[float, float]]:
    """The share of rows below (`below`) or above `threshold`, and its 95 % Wilson interval. A NaN row
    counts as beyond: a row that is not a number is within no floor."""
    values = np.asarray(values, dtype=np.float64)
    inside = values >= threshold if below else values <= threshold
    beyond, n = int(np.count_nonzero(~inside)), len(values)
    return (beyond / n if n else math.nan), wilson_interval(beyond, n)


def rows_to_vouch(share: float, z: float = Z95) -> int:
    """The fewest rows whose Wilson upper bound is within `share` when none is beyond: z^2 / (n + z^2)
    <= share. Fewer rows cannot show a tail that small, however good the candidate."""
    if share >= 1:
        return 1
    if share <= 0:
        raise ValueError(f"a share must be > 0 to be shown from a sample, got {share}")
    return math.ceil(z * z * (1 - share) / share)


def rows_needed(n: int, half_width: float, target_half_width: float) -> int:
    """Rows for an interval of `target_half_width`, from one measured on n rows (width ~ 1/sqrt(n))."""
    if not (math.isfinite(half_width) and target_half_width > 0):
        return n
    return max(n, math.ceil(n * (half_width / target_half_width) ** 2))
