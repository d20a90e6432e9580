"""How well a bundle's scores predict what Reddit did: DialogRPT's and SHP's protocols, and relevance, on real dumps.

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
  how often the top-scored real reply is picked, against chance (the mean of 1 / siblings);
- the SHP protocol (Ethayarajh et al., 2022, Stanford Human Preferences): two top-level replies to
  one post of score >= 10, both scored >= 2, the *later* one with at least twice the score, at
  most 5 pairs a post. The preferred reply never had the head start, so the clock cannot explain
  the win (the time baseline scores 0 by construction);
- relevance, DialogRPT's human-vs-random: the real reply to a comment among 9 real replies to
  other threads of the same subreddit and of similar length (so neither topic-free style nor
  length gives it away); hits@1 of each scorer against chance 1/10.

Each figure has a bootstrap 95% interval, and the model's margins over length and time are
measured on the same pairs (`replyrank.metrics`).

`draw_comparisons` draws the comparisons from loaded pairs; `evaluate` scores every reply once with
any `score(pairs) -> array` and reports the model beside the baselines on the same pairs, so
training (PyTorch) and `replyrank eval` (the bundle) share one protocol.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dumps import Pair, SiblingPair, sibling_pairs
from .fresh_judge import JudgeOptions, evaluate_fresh_judge
from .metrics import bootstrap_interval, mean_interval, pairwise_outcomes, spearman

GAPS = (1, 5, 20)
DIALOGRPT_TEST = {"min_gap": 20, "min_rank_gap": 0.5}  # DialogRPT's test-set filter
SHP = "shp"


@dataclass(frozen=True)
class ShpRule:
    """SHP's pair filter (Ethayarajh et al., 2022): the later top-level reply wins by a score ratio."""

    min_ratio: float = 2.0
    min_score: int = 2  # both replies
    min_post_score: int = 10
    max_per_post: int = 5


@dataclass(frozen=True)
class EvalOptions:
    """How many comparisons of each kind to draw (at most; fewer when the data has fewer)."""

    pairs_per_gap: int = 2000  # and for DialogRPT's filter and SHP
    random_replies: int = 2000
    groups: int = 500
    relevance_sets: int = 500
    distractors: int = 9
    min_siblings: int = 3
    within_seconds: int = 3600
    resamples: int = 1000  # bootstrap resamples of every interval
    seed: int = 0


@dataclass
class Comparisons:
    """The comparisons drawn from one set of pairs; every reply in them is scored once."""

    pairs: dict[str, list[SiblingPair]] = field(default_factory=dict)  # "gap>=1", ..., "dialogrpt", "shp"
    random_replies: list[Pair] = field(default_factory=list)
    groups: list[list[Pair]] = field(default_factory=list)
    requested: int = 0  # pairs asked for per protocol; a protocol with fewer had no more in the data

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


def draw_comparisons(
    pairs: Sequence[Pair], options: EvalOptions = EvalOptions(), post_scores: Mapping[str, int] | None = None
) -> Comparisons:
    """Draw the protocols' comparisons from `pairs` (already filtered, and split by thread if need be).

    `post_scores` (submission full name t3_... -> score, `submission_scores`) enables the SHP protocol.
    """
    rng = random.Random(options.seed)

    def sample(items: list, count: int) -> list:
        return items if len(items) <= count else rng.sample(items, count)

    test = Comparisons(requested=options.pairs_per_gap)
    for gap in GAPS:
        test.pairs[f"gap>={gap}"] = sample(sibling_pairs(pairs, options.within_seconds, min_gap=gap), options.pairs_per_gap)
    test.pairs["dialogrpt"] = sample(sibling_pairs(pairs, options.within_seconds, **DIALOGRPT_TEST), options.pairs_per_gap)
    if post_scores is not None:
        test.pairs[SHP] = sample(shp_pairs(pairs, post_scores, seed=options.seed), options.pairs_per_gap)
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


def shp_pairs(pairs: Iterable[Pair], post_scores: Mapping[str, int], rule: ShpRule = ShpRule(), seed: int = 0) -> list[SiblingPair]:
    """SHP's comparisons: top-level replies to one post, the later one preferred by `rule.min_ratio` at least.

    A pair's `gap` is the score difference, `hours` the time from the earlier to the later reply,
    `rank_gap` 0 (unused). A post with more than `rule.max_per_post` such pairs keeps that many,
    drawn with a seed of its own (`seed`, post id), so adding data elsewhere does not change them.
    """
    by_post: dict[str, list[Pair]] = {}
    for pair in pairs:
        if pair.parent_id.startswith("t3_") and post_scores.get(pair.parent_id, -1) >= rule.min_post_score and pair.score >= rule.min_score:
            by_post.setdefault(pair.parent_id, []).append(pair)
    result: list[SiblingPair] = []
    for post, replies in by_post.items():
        replies.sort(key=lambda p: (p.created_utc, p.reply_id))
        found = [
            SiblingPair(later, earlier, later.score - earlier.score, (later.created_utc - earlier.created_utc) / 3600, 0.0)
            for i, earlier in enumerate(replies) for later in replies[i + 1 :]
            if later.score >= rule.min_ratio * earlier.score and later.created_utc >= earlier.created_utc
        ]
        if len(found) > rule.max_per_post:
            found = random.Random(hashlib.sha256(f"{seed}:{post}".encode()).digest()).sample(found, rule.max_per_post)
        result += found
    return result


def submission_scores(files: Sequence[str | Path]) -> dict[str, int]:
    """Score of every submission in the RS_ dumps among `files` (full name t3_<id> -> score); SHP filters posts by it."""
    from .dumps import is_submission, read_dump

    scores: dict[str, int] = {}
    for path in files:
        kind = Path(path).name[:3].upper()
        if kind == "RC_":
            continue  # comment dumps hold no submission, and are the big files
        for row in read_dump(path):
            if is_submission(row, kind) and row.get("id") is not None:
                try:
                    scores["t3_" + str(row["id"])] = int(row.get("score") or 0)
                except (TypeError, ValueError):
                    continue
    return scores


def relevance_sets(pairs: Sequence[Pair], count: int, distractors: int = 9, seed: int = 0, window: int = 40) -> list[list[Pair]]:
    """Sets of 1 + `distractors` replies to one comment: its real reply first, then real replies to other threads.

    The distractors come from the same subreddit, from the `window` replies nearest in length to the
    real one (so length cannot pick it), each from another thread and with another text; each is
    paired with the real reply's parent. Real replies with too few such neighbours are skipped.
    """
    rng = random.Random(seed)
    by_subreddit: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_subreddit.setdefault(pair.subreddit, []).append(pair)
    lengths = {}
    for name, replies in by_subreddit.items():
        replies.sort(key=lambda p: (len(p.reply), p.reply_id))
        lengths[name] = [len(p.reply) for p in replies]
    anchors = list(pairs) if len(pairs) <= count * 2 else rng.sample(list(pairs), count * 2)  # spares for skipped ones
    sets: list[list[Pair]] = []
    for anchor in anchors:
        if len(sets) == count:
            break
        pool = by_subreddit[anchor.subreddit]
        middle = bisect.bisect_left(lengths[anchor.subreddit], len(anchor.reply))
        nearby = pool[max(0, middle - window // 2) : middle + window // 2]
        others = [p for p in nearby if p.thread_id != anchor.thread_id and p.reply.strip() != anchor.reply.strip()]
        others = list({p.reply.strip(): p for p in others}.values())  # one of each text: a repeated "Thanks!" cannot tie itself
        if len(others) < distractors:
            continue
        chosen = rng.sample(others, distractors)
        sets.append([anchor] + [Pair(anchor.parent, p.reply, p.score, p.thread_id, p.subreddit, p.created_utc, p.reply_id,
                                     anchor.parent_id) for p in chosen])
    return sets


def relevance_texts(sets: Sequence[Sequence[Pair]]) -> list[tuple[str, str]]:
    """Every (parent, reply) of `sets`, set after set: the order `evaluate_relevance` reads scores in."""
    return [(p.parent, p.reply) for group in sets for p in group]


def evaluate_relevance(sets: Sequence[Sequence[Pair]], scores: Mapping[str, Sequence[float] | np.ndarray],
                       resamples: int = 1000, seed: int = 0) -> dict:
    """hits@1 of each scorer on `relevance_sets`: how often the real reply (first of its set) scores highest.

    `scores` maps a scorer's name to its scores of `relevance_texts(sets)`. A tie at the top shares
    the hit (1 / tied), so a constant scorer gets chance.
    """
    if not sets:
        raise ValueError("no relevance sets: too few replies of similar length in other threads")
    size = len(sets[0])
    report: dict = {"sets": len(sets), "candidates_per_set": size, "chance": 1 / size, "hits_at_1": {}, "intervals": {}}
    for name, given in scores.items():
        values = np.asarray(given, dtype=np.float64).reshape(len(sets), size)
        top = values.max(axis=1, keepdims=True)
        outcomes = (values[:, 0] == top[:, 0]) / (values == top).sum(axis=1)
        report["hits_at_1"][name] = float(outcomes.mean())
        report["intervals"][name] = list(mean_interval(outcomes, resamples, seed=seed))
    return report


def evaluate(test: Comparisons, score: Callable[[list[tuple[str, str]]], np.ndarray], resamples: int = 1000, seed: int = 0) -> dict:
    """The model's and the baselines' figures on `test`; `score` maps (parent, reply) pairs to scores.

    `pairwise`, `spearman` and `hits_at_1` hold the figures; `intervals` the bootstrap 95% interval
    of each under the same keys; `margins` the model minus each baseline on the same pairs, with
    its paired interval.
    """
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
    report: dict = {"replies_scored": len(replies), "pairs_requested": test.requested, "pairwise": {}, "pairs": {},
                    "intervals": {"pairwise": {}}, "margins": {}}

    def interval(outcomes: np.ndarray) -> list[float]:
        return list(mean_interval(outcomes, resamples, seed=seed))

    for name, pairs in test.pairs.items():
        report["pairs"][name] = len(pairs)
        if pairs:
            outcomes = {ranker: pairwise_outcomes([f(p.better) for p in pairs], [f(p.worse) for p in pairs]) for ranker, f in rankers.items()}
            report["pairwise"][name] = {ranker: float(o.mean()) for ranker, o in outcomes.items()}
            report["intervals"]["pairwise"][name] = {ranker: interval(o) for ranker, o in outcomes.items()}
            report["margins"][name] = {
                f"model-{baseline}": {"value": float((outcomes["model"] - outcomes[baseline]).mean()),
                                      "interval": interval(outcomes["model"] - outcomes[baseline])}
                for baseline in ("length", "time")
            }
    if len(test.random_replies) > 2:
        truth = np.array([p.score for p in test.random_replies], dtype=float)
        report["spearman"], report["intervals"]["spearman"] = {}, {}
        for ranker in ("model", "length"):
            predicted = np.array([rankers[ranker](p) for p in test.random_replies], dtype=float)
            report["spearman"][ranker] = _spearman_or_none(predicted, truth)
            if report["spearman"][ranker] is not None:
                report["intervals"]["spearman"][ranker] = list(bootstrap_interval(
                    lambda rows: spearman(predicted[rows], truth[rows]), len(truth), resamples, seed=seed))
        report["random_replies"] = len(test.random_replies)
    if test.groups:
        outcomes = {ranker: np.array([_top(group, f) == _top(group, lambda p: p.score) for group in test.groups], dtype=float)
                    for ranker, f in rankers.items()}
        hits = {ranker: float(o.mean()) for ranker, o in outcomes.items()}
        hits["chance"] = float(np.mean([1 / len(group) for group in test.groups]))
        report["hits_at_1"] = hits
        report["intervals"]["hits_at_1"] = {ranker: interval(o) for ranker, o in outcomes.items()}
        report["margins"]["hits_at_1"] = {"model-time": {"value": float((outcomes["model"] - outcomes["time"]).mean()),
                                                         "interval": interval(outcomes["model"] - outcomes["time"])}}
        report["groups"] = len(test.groups)
    return report


def _top(group: list[Pair], key: Callable[[Pair], float]) -> str:
    return max(group, key=lambda p: (key(p), p.reply_id)).reply_id


def _spearman_or_none(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    try:
        return spearman(predicted, truth)
    except ValueError:  # constant scores: no ranking to compare
        return None


def evaluate_bundle(
    bot, files: Sequence[str], options: EvalOptions = EvalOptions(), realism_comments: int = 50, split: str = "all",
    progress: Callable[[str], None] = lambda message: None, fresh_judge: JudgeOptions | None = None,
) -> dict:
    """`replyrank eval`: the protocols above on Pushshift dumps, with the bundle's upvote score as the model;
    relevance (hits@1 among 1 + `options.distractors`) for each of the bundle's scorers; and the realism
    head's ROC-AUC of real replies against the bundle's own candidates (deployment sampling) for
    `realism_comments` parents, with the share of those candidates kept; with `fresh_judge`, a lexical
    judge the generator never met, trained and tested on the data's own threads (`replyrank.fresh_judge`).

    split "all" uses every thread of `files` (dumps the bundle never saw); "test" only the test
    threads of the training split (`split_by_thread`, seed 0), for dumps it was trained on.
    """
    from .bundle import DISCRIMINATOR, RELEVANCE, UPVOTES
    from .dumps import Filters, load_pairs_with_stats, split_by_thread
    from .metrics import roc_auc, roc_auc_interval

    progress(f"reading {len(files)} file(s)")
    pairs, stats = load_pairs_with_stats(files, Filters(max_chars=100_000))
    if split == "test":
        pairs = split_by_thread(pairs, valid=0.05, test=0.1)["test"]
    elif split != "all":
        raise ValueError(f"split must be 'all' or 'test', got {split!r}")
    pairs = [_shortened(p) for p in pairs]
    test = draw_comparisons(pairs, options, submission_scores(files))
    sets = relevance_sets(pairs, options.relevance_sets, options.distractors, options.seed)
    progress(f"{len(pairs)} replies; scoring {len(test.replies())} of them, and {len(sets)} relevance sets")

    def upvotes(texts: list[tuple[str, str]]) -> np.ndarray:
        return _batched(bot, texts, [UPVOTES])[UPVOTES]

    report = {"data": [str(f) for f in files], "split": split, "rows": stats,
              "upvotes": evaluate(test, upvotes, options.resamples, options.seed)}
    report["upvotes"]["score"] = bot.bundle.upvotes.score.name
    if sets:
        names = list(bot.bundle.scorers)
        scores = _batched(bot, relevance_texts(sets), names)  # every scorer of one graph in one pass
        report["relevance"] = evaluate_relevance(sets, {bot.bundle.scorers[n].score.name: scores[n] for n in names},
                                                 options.resamples, options.seed)
    if realism_comments > 0:
        rng = random.Random(options.seed)
        chosen = rng.sample(pairs, min(realism_comments, len(pairs)))
        progress(f"writing candidates for {len(chosen)} comments (deployment sampling)")
        names = [DISCRIMINATOR] + ([RELEVANCE] if bot.bundle.relevance is not None else [])
        real_scores = _batched(bot, [(p.parent, p.reply) for p in chosen], names)
        real = real_scores[DISCRIMINATOR]
        candidates, picks, pick_relevance = [], [], []
        for i, pair in enumerate(chosen):
            result = bot.reply(pair.parent, seed=options.seed + i)
            candidates += [c.realism for c in result.candidates if c.realism is not None]
            picks += [result.best.realism] if result.best and result.best.realism is not None else []
            pick_relevance += [result.best.relevance] if result.best and result.best.relevance is not None else []
        generated = np.array(candidates)
        labels, probs = [1] * len(real) + [0] * len(generated), np.concatenate([real, generated])
        report["realism"] = {
            "comments": len(chosen),
            "candidates": len(generated),
            "roc_auc_real_vs_candidates": roc_auc(labels, probs),
            "roc_auc_interval": list(roc_auc_interval(labels, probs, options.resamples, seed=options.seed)),
            "share_kept": float(np.mean(generated >= bot.realism_threshold)) if len(generated) else None,
            "threshold": bot.realism_threshold,
            "picks_with_realism_at_least_0.5": float(np.mean(np.array(picks) >= 0.5)) if picks else None,
            "median_pick_realism": float(np.median(picks)) if picks else None,
        }
        if RELEVANCE in real_scores:  # does the pick answer its comment as often as the real reply does?
            report["realism"]["median_real_relevance"] = float(np.median(real_scores[RELEVANCE]))
            report["realism"]["median_pick_relevance"] = float(np.median(pick_relevance)) if pick_relevance else None
    if fresh_judge is not None:
        report["fresh_judge"] = evaluate_fresh_judge(bot, pairs, fresh_judge, progress)  # imports scikit-learn
    return report


def _shortened(pair: Pair, limit: int = 2000) -> Pair:
    """Texts past `limit` characters cannot reach the scorer (it reads at most a few hundred tokens)."""
    from dataclasses import replace

    return replace(pair, parent=pair.parent[:limit], reply=pair.reply[:limit])


def _batched(bot, texts: list[tuple[str, str]], names: Sequence[str], size: int = 32) -> dict[str, np.ndarray]:
    """The named scorers' scores of many pairs, in batches of similar length (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i][0]) + len(texts[i][1]))
    scores = {name: np.zeros(len(texts)) for name in names}
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        for name, values in bot.scorers.score([texts[i] for i in chunk], list(names)).items():
            scores[name][chunk] = values
    return scores
