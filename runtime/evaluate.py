"""How well a bundle's scores predict what Reddit did: DialogRPT's sibling protocol, on real dumps.

An upvote model is useful to a reply bot only if it orders replies to one comment the way
voters did. The comparisons (Gao et al., 2020, "Dialogue Response Ranking Training with
Large-Scale Human Feedback Data"):

- pairwise accuracy: replies to one parent, neighbours in posting time and posted within an
  hour of each other, whose scores differ by at least 1, 5 or 20; the share of pairs where the
  better-scored reply is scored higher (a tie counts half). DialogRPT's own test filter is a
  gap of 20 and a normalised rank gap of 0.5;
- the same pairs ranked by two baselines that read no text: "the earlier reply wins" (time)
  and "the longer reply wins" (length);
- Spearman correlation of scores and Reddit scores over random replies (any parent);
- hits@1: parents with at least 3 replies posted within the hour, whose best reply is unique:
  how often the top-scored real reply is picked, against chance (the mean of 1 / siblings).

`draw_comparisons` draws the comparisons from loaded pairs; `evaluate` scores every reply once with
any `score(pairs) -> array` and reports the model beside the baselines on the same pairs, so
training (PyTorch) and `replyrank eval` (the bundle) share one protocol.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .dumps import Pair, SiblingPair, sibling_pairs
from .metrics import pairwise_accuracy, spearman

GAPS = (1, 5, 20)
DIALOGRPT_TEST = {"min_gap": 20, "min_rank_gap": 0.5}  # DialogRPT's test-set filter


@dataclass(frozen=True)
class EvalOptions:
    """How many comparisons of each kind to draw (at most; fewer when the data has fewer)."""

    pairs_per_gap: int = 400
    random_replies: int = 2000
    groups: int = 500
    min_siblings: int = 3
    within_seconds: int = 3600
    seed: int = 0


@dataclass
class Comparisons:
    """The comparisons drawn from one set of pairs; every reply in them is scored once."""

    pairs: dict[str, list[SiblingPair]] = field(default_factory=dict)  # "gap>=1", ..., "dialogrpt"
    random_replies: list[Pair] = field(default_factory=list)
    groups: list[list[Pair]] = field(default_factory=list)

    def replies(self) -> list[Pair]:
        """Every reply the comparisons need, once each, in a fixed order."""
        seen: dict[str, Pair] = {}
        for pairs in self.pairs.values():
            for pair in pairs:
                seen.setdefault(pair.better.reply_id, pair.better)
                seen.setdefault(pair.worse.reply_id, pair.worse)
        for reply in self.random_replies:
            seen.setdefault(reply.reply_id, reply)
        for group in self.groups:
            for reply in group:
                seen.setdefault(reply.reply_id, reply)
        return list(seen.values())


def draw_comparisons(pairs: Sequence[Pair], options: EvalOptions = EvalOptions()) -> Comparisons:
    """Draw the protocol's comparisons from `pairs` (already filtered, and split by thread if need be)."""
    rng = random.Random(options.seed)

    def sample(items: list, count: int) -> list:
        return items if len(items) <= count else rng.sample(items, count)

    test = Comparisons()
    for gap in GAPS:
        test.pairs[f"gap>={gap}"] = sample(sibling_pairs(pairs, options.within_seconds, min_gap=gap), options.pairs_per_gap)
    test.pairs["dialogrpt"] = sample(sibling_pairs(pairs, options.within_seconds, **DIALOGRPT_TEST), options.pairs_per_gap)
    test.random_replies = sample(list(pairs), options.random_replies)
    by_parent: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_parent.setdefault(pair.parent_id, []).append(pair)
    groups = []
    for siblings in by_parent.values():
        siblings.sort(key=lambda p: (p.created_utc, p.reply_id))
        window = [p for p in siblings if p.created_utc - siblings[0].created_utc <= options.within_seconds]
        scores = sorted((p.score for p in window), reverse=True)
        if len(window) >= options.min_siblings and scores[0] > scores[1]:
            groups.append(window)
    test.groups = sample(groups, options.groups)
    return test


def evaluate(test: Comparisons, score: Callable[[list[tuple[str, str]]], np.ndarray]) -> dict:
    """The model's and the baselines' figures on `test`; `score` maps (parent, reply) pairs to scores."""
    replies = test.replies()
    if not replies:
        raise ValueError("the test set is empty: no replies with siblings in the data")
    values = np.asarray(score([(p.parent, p.reply) for p in replies]), dtype=np.float64)
    model = {p.reply_id: float(v) for p, v in zip(replies, values)}
    rankers: dict[str, Callable[[Pair], float]] = {
        "model": lambda p: model[p.reply_id],
        "time": lambda p: -p.created_utc,  # the earlier reply wins
        "length": lambda p: len(p.reply),  # the longer reply wins
    }
    report: dict = {"replies_scored": len(replies), "pairwise": {}, "pairs": {}}
    for name, pairs in test.pairs.items():
        report["pairs"][name] = len(pairs)
        if pairs:
            report["pairwise"][name] = {
                ranker: pairwise_accuracy([f(p.better) for p in pairs], [f(p.worse) for p in pairs]) for ranker, f in rankers.items()
            }
    if len(test.random_replies) > 2:
        truth = [p.score for p in test.random_replies]
        report["spearman"] = {
            ranker: _spearman_or_none([f(p) for p in test.random_replies], truth) for ranker, f in (("model", rankers["model"]), ("length", rankers["length"]))
        }
        report["random_replies"] = len(test.random_replies)
    if test.groups:
        hits = {ranker: float(np.mean([_top(group, f) == _top(group, lambda p: p.score) for group in test.groups])) for ranker, f in rankers.items()}
        hits["chance"] = float(np.mean([1 / len(group) for group in test.groups]))
        report["hits_at_1"] = hits
        report["groups"] = len(test.groups)
    return report


def _top(group: list[Pair], key: Callable[[Pair], float]) -> str:
    return max(group, key=lambda p: (key(p), p.reply_id)).reply_id


def _spearman_or_none(predicted: list[float], truth: list[int]) -> float | None:
    try:
        return spearman(predicted, truth)
    except ValueError:  # constant scores: no ranking to compare
        return None


def evaluate_bundle(
    bot, files: Sequence[str], options: EvalOptions = EvalOptions(), realism_comments: int = 50, split: str = "all",
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """`replyrank eval`: the protocol above on Pushshift dumps, with the bundle's upvote score as the model,
    plus the realism head's ROC-AUC of real replies against the bundle's own candidates (deployment
    sampling) for `realism_comments` parents, and the share of those candidates kept.

    split "all" uses every thread of `files` (dumps the bundle never saw); "test" only the test
    threads of the training split (`split_by_thread`, seed 0), for dumps it was trained on.
    """
    from .bundle import DISCRIMINATOR, UPVOTES
    from .dumps import Filters, load_pairs_with_stats, split_by_thread
    from .metrics import roc_auc

    progress(f"reading {len(files)} file(s)")
    pairs, stats = load_pairs_with_stats(files, Filters(max_chars=100_000))
    if split == "test":
        pairs = split_by_thread(pairs, valid=0.05, test=0.1)["test"]
    elif split != "all":
        raise ValueError(f"split must be 'all' or 'test', got {split!r}")
    pairs = [_shortened(p) for p in pairs]
    test = draw_comparisons(pairs, options)
    progress(f"{len(pairs)} replies; scoring {len(test.replies())} of them")

    def upvotes(texts: list[tuple[str, str]]) -> np.ndarray:
        return _batched(bot, texts, UPVOTES)

    report = {"data": [str(f) for f in files], "split": split, "rows": stats, "upvotes": evaluate(test, upvotes)}
    report["upvotes"]["score"] = bot.bundle.upvotes.score.name
    if realism_comments > 0:
        rng = random.Random(options.seed)
        chosen = rng.sample(pairs, min(realism_comments, len(pairs)))
        progress(f"writing candidates for {len(chosen)} comments (deployment sampling)")
        real = _batched(bot, [(p.parent, p.reply) for p in chosen], DISCRIMINATOR)
        candidates, picks = [], []
        for i, pair in enumerate(chosen):
            result = bot.reply(pair.parent, seed=options.seed + i)
            candidates += [c.realism for c in result.candidates if c.realism is not None]
            picks += [result.best.realism] if result.best and result.best.realism is not None else []
        generated = np.array(candidates)
        report["realism"] = {
            "comments": len(chosen),
            "candidates": len(generated),
            "roc_auc_real_vs_candidates": roc_auc([1] * len(real) + [0] * len(generated), np.concatenate([real, generated])),
            "share_kept": float(np.mean(generated >= bot.realism_threshold)) if len(generated) else None,
            "threshold": bot.realism_threshold,
            "picks_with_realism_at_least_0.5": float(np.mean(np.array(picks) >= 0.5)) if picks else None,
            "median_pick_realism": float(np.median(picks)) if picks else None,
        }
    return report


def _shortened(pair: Pair, limit: int = 2000) -> Pair:
    """Texts past `limit` characters cannot reach the scorer (it reads at most a few hundred tokens)."""
    from dataclasses import replace

    return replace(pair, parent=pair.parent[:limit], reply=pair.reply[:limit])


def _batched(bot, texts: list[tuple[str, str]], name: str, size: int = 32) -> np.ndarray:
    """One scorer's scores of many pairs, in batches of similar length (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i][0]) + len(texts[i][1]))
    scores = np.zeros(len(texts))
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        scores[chunk] = bot.scorers.score([texts[i] for i in chunk], [name])[name]
    return scores
