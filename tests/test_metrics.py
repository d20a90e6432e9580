"""Evaluation metrics against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replyrank.metrics import (
    balanced_accuracy, bootstrap_interval, mean_interval, pairwise_accuracy, pairwise_outcomes, perplexity, roc_auc,
    roc_auc_interval, spearman,
)


def test_roc_auc() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 loses to 0.4, the other 3 pairs win -> 3/4.
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # Same scores, labels [0, 1, 0, 1]: positives 0.4, 0.8 beat both 0.1 and 0.35 -> 1.0.
    assert roc_auc([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1, 1], [0.2, 0.5, 0.9])
    with pytest.raises(ValueError, match="one length"):
        roc_auc([0, 1], [0.2])


def test_balanced_accuracy() -> None:
    # Class 0: 2 of 3 right; class 1: 1 of 1 right -> (2/3 + 1) / 2.
    assert balanced_accuracy([0, 0, 0, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(5 / 6)
    assert balanced_accuracy([0, 0, 0, 1], [0.1, 0.2, 0.7, 0.9], threshold=0.8) == 1.0
    assert balanced_accuracy([0, 1], [0.5, 0.5]) == 0.5  # the threshold itself predicts 1


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 35, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-constant"):
        spearman([1, 1, 1], [1, 2, 3])


def test_pairwise_accuracy() -> None:
    assert pairwise_accuracy([0.9, 0.8], [0.1, 0.2]) == 1.0
    # Right, wrong, tie: (1 + 0 + 0.5) / 3.
    assert pairwise_accuracy([0.9, 0.1, 0.5], [0.1, 0.9, 0.5]) == pytest.approx(0.5)
    assert pairwise_accuracy([0.3], [0.3]) == 0.5
    with pytest.raises(ValueError):
        pairwise_accuracy([], [])


def test_perplexity() -> None:
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(50), 10) == pytest.approx(50.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_pairwise_outcomes_count_a_tie_half() -> None:
    assert pairwise_outcomes([3, 1, 2], [1, 3, 2]).tolist() == [1.0, 0.0, 0.5]


def test_intervals_of_a_constant_outcome_have_no_width() -> None:
    assert mean_interval([1, 1, 1, 1]) == (1.0, 1.0)
    assert roc_auc_interval([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0)  # every resample keeps both classes
    assert bootstrap_interval(lambda rows: 0.25, 10) == (0.25, 0.25)


def test_mean_interval_matches_the_normal_approximation() -> None:
    # 400 outcomes, 60% ones: standard error sqrt(0.6 * 0.4 / 400) = 0.0245, so the 95% interval is about 0.6 +- 0.048
    low, high = mean_interval([1] * 240 + [0] * 160, resamples=4000)
    assert low == pytest.approx(0.552, abs=0.01) and high == pytest.approx(0.648, abs=0.01)


def test_bootstrap_interval_resamples_pairs_together() -> None:
    # a paired difference that is always exactly 0.5: resampling rows together keeps it, whatever the spread of each side
    first = np.arange(50, dtype=float)
    second = first - 0.5
    assert bootstrap_interval(lambda rows: float(np.mean(first[rows] - second[rows])), 50) == (0.5, 0.5)


def test_bootstrap_interval_skips_resamples_where_the_statistic_is_undefined() -> None:
    values = np.array([1.0, 2.0])
    low, high = bootstrap_interval(lambda rows: spearman(values[rows], values[rows]), 2, resamples=200)
    assert low == high == pytest.approx(1.0)  # resamples of one repeated item have no ranking and are left out
    with pytest.raises(ValueError, match="undefined on every resample"):
        bootstrap_interval(lambda rows: spearman(values[:1][rows], values[:1][rows]), 1)
