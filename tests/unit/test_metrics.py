import numpy as np
import pytest

from quantgate.evaluate import parity_report
from quantgate.families.sentence_embedding import (
    cosine_rows,
    embedding_agreement,
    neighbour_agreement,
    spearman,
)

ATOL = 1e-9


def test_identical_outputs_have_perfect_parity():
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    report = parity_report(x, x.copy(), abs_tol=1e-6, mean_tol=1e-6)
    assert report.passed
    assert report.max_abs_diff == 0
    agreement = embedding_agreement(x, x.copy())
    assert agreement["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert agreement["neighbour_agreement"] == 1.0


def test_parity_fields_match_the_seed_report_and_catch_a_single_outlier():
    ref = np.zeros((4, 3), dtype=np.float32)
    cand = ref.copy()
    cand[2, 1] = 0.5
    report = parity_report(ref, cand, abs_tol=0.1, mean_tol=0.1)
    assert report.max_abs_diff == pytest.approx(0.5)
    assert report.mean_abs_diff == pytest.approx(0.5 / 12)
    assert report.passed is False  # max over tol, mean under: either one fails parity
    assert {"max_abs_diff", "mean_abs_diff", "passed"} <= set(report.model_dump())


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0]])
    assert np.allclose(cosine_rows(a, b), [0.0, 1.0], atol=ATOL)


def test_neighbour_agreement_counts_changed_nearest_neighbours():
    ref = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    swapped = ref[[0, 1, 3, 2]]  # rows 2 and 3 swap places: their neighbours (each other) are unchanged
    assert neighbour_agreement(ref, swapped) == 1.0
    moved = ref.copy()
    moved[1] = [0.0, 1.0]  # row 1 jumps onto row 2: 0->3, 1->2, 2->1, 3->1 -- every neighbour changes
    assert neighbour_agreement(ref, moved) == 0.0
    nudged = ref.copy()
    nudged[3] = [0.2, 0.8]  # a small move that keeps every pairing
    assert neighbour_agreement(ref, nudged) == 1.0


def test_spearman_is_rank_based():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        parity_report(np.zeros((2, 3)), np.zeros((3, 3)), 0.1, 0.1)
