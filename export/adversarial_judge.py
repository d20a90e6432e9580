"""How human a reply reads, as an adversarial round judges it: a fresh pair model stacked with the reply's length.

A pair model trained for one epoch can miss what a rule on length alone sees, so a generator
could pass it with replies no reader takes for human. The judge's P(human) is a logistic
regression on [logit of the pair model's P(human), `length_features`], fitted on discriminator
training rows the pair model never trained on (`hold_back`): never much weaker than either part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from replyrank.metrics import roc_auc

from . import rankers
from .convert import ExportError
from .train import torch_device

JUDGE = "judge.json"  # beside a round's discriminator: the weights stacking it with reply length
CALIBRATION_SHARE = 0.2  # of the discriminator's training rows, held back from the pair model to fit the judge on


class Scorer(Protocol):
    """Anything that gives one score per (comment, reply) pair."""

    def scores(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray: ...


class PairScorer:
    """A pair model (`export.rankers`) in torch, scoring (comment, reply) pairs with one of its heads:
    "realism" gives P(human); "upvotes" a Bradley-Terry logit, where only differences matter."""

    def __init__(self, folder: Path, options: rankers.RankerOptions, head: str = "realism"):
        if not rankers.is_pair_model(folder):
            raise ExportError(f"{folder} is not a pair model (what `replyrank train upvotes` or `train discriminator` writes)")
        self.model, self.tokenizer, info = rankers.load(folder)
        self.model.to(torch_device(options.device))
        self.max_length = options.max_length
        self.head = ("realism", "upvotes").index(head)
        # the k of selection's upvote chance, measured on validation pairs (None: never measured)
        self.pairwise_scale: float | None = info.get("heads", {}).get("upvotes", {}).get("bt_scale")

    def scores(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.zeros(0)
        return rankers.predict(self.model, self.tokenizer, list(pairs), self.max_length)[self.head]


def length_features(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """log(1 + characters) of each reply and its square: a reply can be too short as well as too long to pass for human."""
    n = np.log1p(np.array([len(reply.strip()) for _, reply in pairs], dtype=np.float64))
    return np.stack([n, n * n], axis=1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 30) -> np.ndarray:
    """Weights (one per column of `x`, then the bias) of an L2-regularized logistic regression, by Newton's method."""
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])  # standardized, so one l2 fits every column
    w = np.zeros(z.shape[1])
    penalty = l2 * np.r_[np.ones(len(w) - 1), 0.0]  # the bias is not shrunk
    for _ in range(steps):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (p - y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        w = w - np.linalg.solve(hessian, gradient)
    return np.r_[w[:-1] / std, w[-1] - (w[:-1] * mean / std).sum()]  # back to the raw columns


def logistic(x: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """P(1) of each row of `x` under `fit_logistic`'s weights."""
    w = np.asarray(weights, dtype=np.float64)
    return 1 / (1 + np.exp(-(x @ w[:-1] + w[-1])))


class Judge:
    """A round's judge: its pair model stacked with the reply's length (see the module docstring)."""

    def __init__(self, pair: Scorer, weights: Sequence[float]):
        self.pair, self.weights = pair, list(weights)

    def features(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        p = np.clip(self.pair.scores(pairs), 1e-6, 1 - 1e-6)
        return np.hstack([np.log(p / (1 - p))[:, None], length_features(pairs)])

    def scores(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(human) of each (comment, reply)."""
        return logistic(self.features(pairs), self.weights) if pairs else np.zeros(0)

    @classmethod
    def fit(cls, pair: Scorer, real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]]) -> tuple[Judge, dict[str, Any]]:
        """The judge, and its record: its weights and a length-only baseline's, fitted on the same rows."""
        if min(len(real), len(fake)) < 2:
            raise ExportError(f"too few held-back rows to fit the judge: {len(real)} real, {len(fake)} generated; give more --fakes")
        rows, labels = list(real) + list(fake), np.r_[np.ones(len(real)), np.zeros(len(fake))]
        judge = cls(pair, fit_logistic(cls(pair, []).features(rows), labels).tolist())
        record = {"weights": judge.weights, "features": ["pair model logit", "log1p(chars)", "log1p(chars)^2"],
                  "length_weights": fit_logistic(length_features(rows), labels).tolist(), "real": len(real), "generated": len(fake)}
        return judge, record

    @classmethod
    def read(cls, folder: Path, options: rankers.RankerOptions) -> Judge:
        """The judge a round saved: FOLDER/discriminator and FOLDER/judge.json."""
        return cls(PairScorer(folder / "discriminator", options), json.loads((folder / JUDGE).read_text())["weights"])


def auc(scorer: Scorer, real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]]) -> float:
    """ROC-AUC of `scorer` telling `real` replies (1) from `fake` ones (0)."""
    return roc_auc([1] * len(real) + [0] * len(fake), scorer.scores(list(real) + list(fake)))


def hold_back(rows: Sequence[tuple[str, str]], share: float = CALIBRATION_SHARE) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the first 1 - share of rows, the rest), cut where the comment changes: a comment's replies stay on one side."""
    cut = round(len(rows) * (1 - share))
    while 0 < cut < len(rows) and rows[cut][0] == rows[cut - 1][0]:
        cut += 1
    return list(rows[:cut]), list(rows[cut:])
