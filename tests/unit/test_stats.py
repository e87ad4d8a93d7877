"""The intervals the gates are judged by: coverage on data with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from quantgate.stats import (
    bootstrap_indices,
    percentile_interval,
    rows_needed,
    spearman_resampled,
    wilson_interval,
)


def test_vectorised_spearman_matches_scipy_on_every_resample():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 6, 300).astype(float)  # ties, like STS scores
    scores = gold + rng.normal(0, 2, 300)
    idx = bootstrap_indices(300, resamples=20, seed=3)
    fast = spearman_resampled(gold, scores, idx)
    slow = [spearmanr(gold[i], scores[i]).statistic for i in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_bootstrap_interval_covers_the_true_spearman_about_95_percent_of_the_time():
    """Bivariate normal with correlation r: Spearman's population value is 6/pi * asin(r/2)."""
    r = 0.6
    true = 6 / math.pi * math.asin(r / 2)
    cov = [[1, r], [r, 1]]
    hits, trials = 0, 200
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        x, y = rng.multivariate_normal([0, 0], cov, size=200).T
        lo, hi = percentile_interval(spearman_resampled(x, y, bootstrap_indices(200, seed=seed)))
        hits += lo <= true <= hi
    assert 0.90 <= hits / trials <= 0.99, hits / trials


def test_wilson_interval_known_values_and_edges():
    lo, hi = wilson_interval(90, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.8256, 0.9448)  # textbook values
    assert wilson_interval(100, 100)[1] == 1.0
    assert wilson_interval(100, 100)[0] == pytest.approx(0.963, abs=1e-3)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_wilson_coverage_near_one():
    p, n, hits, trials = 0.95, 300, 0, 400
    rng = np.random.default_rng(0)
    for _ in range(trials):
        lo, hi = wilson_interval(int(rng.binomial(n, p)), n)
        hits += lo <= p <= hi
    assert 0.92 <= hits / trials <= 0.98


def test_constant_data_gives_no_interval():
    idx = bootstrap_indices(50, resamples=100)
    rho = spearman_resampled(np.ones(50), np.arange(50.0), idx)
    assert np.isnan(rho).all()
    assert all(math.isnan(v) for v in percentile_interval(rho))


def test_rows_needed_scales_with_the_square_of_the_width():
    assert rows_needed(100, 0.2, 0.1) == 400
    assert rows_needed(100, 0.05, 0.1) == 100
