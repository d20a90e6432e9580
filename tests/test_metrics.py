"""Evaluation metrics against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from replyrank.metrics import balanced_accuracy, pairwise_accuracy, perplexity, roc_auc, spearman


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
