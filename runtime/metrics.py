"""Evaluation metrics for the reply rankers and the reply generator.

The realism head is a binary classifier (real reply vs. not), so it gets ROC AUC
and balanced accuracy; the upvote head predicts a score, so it gets Spearman
correlation and the pairwise accuracy of DialogRPT (Gao et al., 2020): the share
of sibling pairs where the model ranks the higher-scored reply above the
lower-scored one. The generator gets perplexity. Plain numpy, so the runtime's
`eval` needs nothing beyond it; ties get average ranks, as in SciPy.

Every figure `eval` reports carries a percentile bootstrap 95% interval (Efron & Tibshirani, 1993):
the statistic recomputed on resamples of its items drawn with replacement. A difference of two
rankers on the same pairs is resampled pairwise (one index set for both), so the interval of the
margin is narrower than the two intervals side by side would suggest; a ROC-AUC is resampled
within each class, so every resample keeps both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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
    return float(np.mean(pairwise_outcomes(pred_hi, pred_lo)))


def pairwise_outcomes(pred_hi: ArrayLike, pred_lo: ArrayLike) -> np.ndarray:
    """Per pair: 1 where the higher-voted reply scores higher, 0.5 for a tie, 0 otherwise."""
    hi, lo = _same_length(pred_hi, pred_lo, "pairwise_accuracy")
    if hi.size == 0:
        raise ValueError("pairwise_accuracy needs at least one pair")
    return (hi > lo) + 0.5 * (hi == lo)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], size: int, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over `size` items resampled with replacement.

    `statistic` gets an index array (length `size`, repeats allowed) and computes the figure on
    those items, so one call serves any statistic and paired statistics resample their pairs together.
    Resamples where the statistic is undefined (it raises ValueError, e.g. a constant Spearman input)
    are left out.
    """
    if size < 1 or resamples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap_interval needs size >= 1, resamples >= 1 and 0 < level < 1; got {size}, {resamples}, {level}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        try:
            values.append(statistic(rng.integers(0, size, size)))
        except ValueError:
            continue
    if not values:
        raise ValueError("the statistic is undefined on every resample")
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def mean_interval(outcomes: ArrayLike, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-item outcomes (pairwise accuracy, hits@1, a paired difference)."""
    values = np.asarray(outcomes, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("mean_interval needs at least one outcome")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)  # one row a resample
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def roc_auc_interval(labels: ArrayLike, probs: ArrayLike, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of `roc_auc`, resampling positives and negatives each within their class."""
    labels_arr, probs_arr = _same_length(labels, probs, "roc_auc_interval")
    classes = np.unique(labels_arr)
    if classes.size < 2:
        raise ValueError(f"roc_auc needs labels of both classes; got only {classes.tolist()}")
    positives, negatives = np.flatnonzero(labels_arr == classes[-1]), np.flatnonzero(labels_arr != classes[-1])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows = np.concatenate([rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)])
        values.append(roc_auc(labels_arr[rows], probs_arr[rows]))
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


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
