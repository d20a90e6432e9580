"""Evaluation metrics for the reply rankers and the reply generator.

The realism head is a binary classifier (real reply vs. not), so it gets ROC AUC
and balanced accuracy; the upvote head predicts a score, so it gets Spearman
correlation and the pairwise accuracy of DialogRPT (Gao et al., 2020): the share
of sibling pairs where the model ranks the higher-scored reply above the
lower-scored one. The generator gets perplexity. Plain numpy, so the runtime's
`eval` needs nothing beyond it; ties get average ranks, as in SciPy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def roc_auc(labels: ArrayLike, probs: ArrayLike) -> float:
    """Area under the ROC curve of `probs` (higher = more likely label 1) against 0/1 `labels`."""
    labels_arr = _same_length(labels, probs, "roc_auc")[0]
    classes = np.unique(labels_arr)
    if classes.size < 2:
        raise ValueError(f"roc_auc needs labels of both classes; got only {classes.tolist()}")
    # Mann-Whitney U: the share of (positive, negative) pairs ranked right, ties counting half
    ranks = _ranks(np.asarray(probs, dtype=float))
    positives = labels_arr == classes[-1]
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def balanced_accuracy(labels: ArrayLike, probs: ArrayLike, threshold: float = 0.5) -> float:
    """Mean of the per-class recalls when `probs >= threshold` predicts label 1."""
    labels_arr, probs_arr = _same_length(labels, probs, "balanced_accuracy")
    predicted = probs_arr >= threshold
    positives = labels_arr == 1
    recalls = [float(np.mean(predicted[positives] == 1)) if positives.any() else None,
               float(np.mean(predicted[~positives] == 0)) if (~positives).any() else None]
    return float(np.mean([r for r in recalls if r is not None]))


def spearman(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation of predicted and true scores, in [-1, 1]."""
    pred_arr, target_arr = _same_length(pred, target, "spearman")
    if pred_arr.size < 2 or np.ptp(pred_arr) == 0 or np.ptp(target_arr) == 0:
        # SciPy would return nan with a warning; a constant input has no ranking to compare.
        raise ValueError("spearman needs at least two values and non-constant pred and target")
    return float(np.corrcoef(_ranks(pred_arr), _ranks(target_arr))[0, 1])


def pairwise_accuracy(pred_hi: ArrayLike, pred_lo: ArrayLike) -> float:
    """Share of sibling pairs where the model scores the higher-voted reply higher.

    `pred_hi[i]` and `pred_lo[i]` are the model's scores of pair i's higher- and
    lower-voted reply; a tie counts half, so a constant model scores 0.5.
    """
    hi, lo = _same_length(pred_hi, pred_lo, "pairwise_accuracy")
    if hi.size == 0:
        raise ValueError("pairwise_accuracy needs at least one pair")
    return float(np.mean((hi > lo) + 0.5 * (hi == lo)))


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token), with the NLL in nats."""
    if n_tokens <= 0:
        raise ValueError(f"perplexity needs n_tokens > 0; got {n_tokens}")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:  # a mean NLL above ~709 nats: perplexity beyond a float
        return math.inf


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(unique) < len(values):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    return ranks


def _same_length(first: ArrayLike, second: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    first_arr = np.asarray(first, dtype=float).ravel()
    second_arr = np.asarray(second, dtype=float).ravel()
    if first_arr.shape != second_arr.shape:
        raise ValueError(f"{name} needs inputs of one length; got {first_arr.size} and {second_arr.size}")
    return first_arr, second_arr
