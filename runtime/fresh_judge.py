"""A fresh lexical judge: can a judge the generator never met tell the bundle's replies from real ones?

The bundle's own realism head is the judge its generator was picked against, so passing it proves
little. OpenAI's GPT-2 output-detector work (Solaiman et al., 2019, "Release Strategies and the
Social Impacts of Language Models") found that a TF-IDF logistic regression already catches 88-97%
of the 117M model's text: the cheap lexical detector is the first judge to beat. This one reads
word 1-2-grams, character 2-5-grams and the reply's length (scikit-learn), and is trained on real
replies against the bundle's candidates to comments of *training* threads, then tested on *test*
threads (`split_by_thread`), so no test thread's topic or wording was seen in training. Length alone
(a logistic regression on the same length features) is trained and reported beside it: a judge that
only counts characters must not be the reason for a high score.

The threshold is set on the training threads alone: the score above which `keep_real` (90%) of the
training real replies lie, read from out-of-fold scores (folds grouped by thread), because in-sample
scores of a TF-IDF model that has memorised its rows would put it far too high. Every AUC and share
carries a bootstrap 95% interval (`replyrank.metrics`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .dumps import Pair, split_by_thread
from .errors import InputError
from .metrics import mean_interval, roc_auc, roc_auc_interval

PACKAGE = "sklearn"
INSTALL = "pip install scikit-learn"


@dataclass(frozen=True)
class JudgeOptions:
    """How much the fresh judge reads; the comments are split 2:1 between training and test threads."""

    comments: int = 200  # comments the bundle replies to, both sides together
    test_share: float = 1 / 3  # of the threads, and of the comments
    real_test: int = 1500  # real test replies, at most
    keep_real: float = 0.9  # the threshold takes this share of the training real replies for real
    folds: int = 5
    resamples: int = 1000
    seed: int = 0


@dataclass
class Side:
    """One side of the split: real replies and what the bundle wrote, each text with its thread (the folds' groups)."""

    comments: int = 0
    real: list[tuple[str, str]] = field(default_factory=list)  # (thread, text)
    candidates: list[tuple[str, str]] = field(default_factory=list)
    picks: list[tuple[str, str]] = field(default_factory=list)


def length_features(texts: Sequence[str]) -> np.ndarray:
    """log(1 + characters) and log(1 + words): the length a judge could count without reading."""
    return np.array([[np.log1p(len(t)), np.log1p(len(t.split()))] for t in texts])


def make_judge(lexical: bool = True):
    """An unfitted scikit-learn judge on raw texts: TF-IDF word and character n-grams plus length, or length alone."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    length = make_pipeline(FunctionTransformer(length_features), StandardScaler())
    parts = [("length", length)]
    if lexical:
        parts += [("words", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
                  ("chars", TfidfVectorizer(analyzer="char", ngram_range=(2, 5), min_df=2, sublinear_tf=True))]
    # liblinear: a few passes over sparse n-gram rows, where lbfgs takes many times longer on a busy machine
    return make_pipeline(FeatureUnion(parts), LogisticRegression(solver="liblinear", class_weight="balanced"))


def train_judge(real: Sequence[tuple[str, str]], generated: Sequence[tuple[str, str]], lexical: bool = True,
                keep_real: float = 0.9, folds: int = 5):
    """The judge fitted on (thread, text) rows, real labelled 1, and its threshold from out-of-fold scores of `real`."""
    from sklearn.model_selection import GroupKFold, cross_val_predict

    rows = [*real, *generated]
    texts, groups = [text for _, text in rows], [thread for thread, _ in rows]
    labels = np.array([1] * len(real) + [0] * len(generated))
    splits = min(folds, len(set(groups)))
    if splits < 2 or not real or not generated:
        raise InputError("the fresh judge needs real replies and candidates from at least two training threads: "
                         "raise --fresh-judge-comments or give more data")
    out_of_fold = cross_val_predict(make_judge(lexical), texts, labels, groups=groups, cv=GroupKFold(splits),
                                    method="predict_proba")[:, 1]
    threshold = float(np.quantile(out_of_fold[: len(real)], 1 - keep_real))
    return make_judge(lexical).fit(texts, labels), threshold


def judge_report(judge, threshold: float, test: Side, resamples: int, seed: int) -> dict:
    """One judge's AUCs and shares taken for real on `test`, each with its bootstrap 95% interval."""
    def scores(rows: list[tuple[str, str]]) -> np.ndarray:
        return judge.predict_proba([text for _, text in rows])[:, 1] if rows else np.zeros(0)

    real, candidates, picks = scores(test.real), scores(test.candidates), scores(test.picks)
    report: dict = {"threshold": threshold}
    for name, generated in (("candidates", candidates), ("picks", picks)):
        labels, probs = [1] * len(real) + [0] * len(generated), np.concatenate([real, generated])
        report[f"roc_auc_real_vs_{name}"] = roc_auc(labels, probs)
        report[f"roc_auc_real_vs_{name}_interval"] = list(roc_auc_interval(labels, probs, resamples, seed=seed))
    for name, values in (("real", real), ("candidates", candidates), ("picks", picks)):
        taken = (values >= threshold).astype(float)
        report[f"{name}_taken_for_real"] = float(taken.mean())
        report[f"{name}_taken_for_real_interval"] = list(mean_interval(taken, resamples, seed=seed))
    above = (picks > np.median(real)).astype(float)  # 0.5 where the picks read like the real replies
    report["picks_above_real_median"] = float(above.mean())
    report["picks_above_real_median_interval"] = list(mean_interval(above, resamples, seed=seed))
    return report


def write_replies(bot, pairs: Sequence[Pair], count: int, side: Side, seed: int, progress: Callable[[str], None]) -> None:
    """The bundle's candidates (every one it scored) and pick for `count` comments of `pairs`, deployment sampling."""
    parents = list({p.parent_id: p for p in pairs}.values())  # a comment with several replies is written to once
    chosen = random.Random(seed).sample(parents, min(count, len(parents)))
    start = time.perf_counter()
    for i, pair in enumerate(chosen):
        result = bot.reply(pair.parent, seed=seed + i)
        side.candidates += [(pair.thread_id, c.text) for c in result.candidates if c.realism is not None]
        side.picks += [(pair.thread_id, result.best.text)] if result.best is not None else []
        if (i + 1) % 25 == 0:
            progress(f"fresh judge: {i + 1} of {len(chosen)} comments in {time.perf_counter() - start:.0f} s")
    side.comments = len(chosen)


def evaluate_fresh_judge(bot, pairs: Sequence[Pair], options: JudgeOptions = JudgeOptions(),
                         progress: Callable[[str], None] = lambda message: None) -> dict:
    """`eval --fresh-judge`: the lexical judge and length alone, trained on training threads and tested on test threads.

    The threads are split with seed `options.seed + 1`, so `eval --split test` (already the test threads
    of seed 0) splits again instead of landing every thread on one side.
    """
    sides = split_by_thread(pairs, valid=0, test=options.test_share, seed=options.seed + 1)
    train, test = Side(), Side()
    test_comments = round(options.comments * options.test_share)
    progress(f"fresh judge: writing replies to {options.comments - test_comments} comments of training threads "
             f"and {test_comments} of test threads (deployment sampling)")
    start = time.perf_counter()
    write_replies(bot, sides["train"], options.comments - test_comments, train, options.seed, progress)
    write_replies(bot, sides["test"], test_comments, test, options.seed + options.comments, progress)
    written = time.perf_counter() - start
    rng = random.Random(options.seed)
    real_train = [(p.thread_id, p.reply) for p in sides["train"]]
    train.real = rng.sample(real_train, min(len(train.candidates), len(real_train)))  # as many real rows as generated
    real_test = [(p.thread_id, p.reply) for p in sides["test"]]
    test.real = rng.sample(real_test, min(options.real_test, len(real_test)))
    if not test.real or not test.candidates or not test.picks:
        raise InputError("the fresh judge found no real replies, candidates or picks on test threads: "
                         "raise --fresh-judge-comments or give more data")
    report: dict = {
        "comments": {"train": train.comments, "test": test.comments},
        "counts": {"train": {"real": len(train.real), "candidates": len(train.candidates)},
                   "test": {"real": len(test.real), "candidates": len(test.candidates), "picks": len(test.picks)}},
        "median_chars": {name: float(np.median([len(t) for _, t in rows]))
                         for name, rows in (("real", test.real), ("candidates", test.candidates), ("picks", test.picks))},
        "threshold_rule": f"takes {options.keep_real:.0%} of the training real replies for real ({options.folds}-fold "
                          "out-of-fold scores, folds grouped by thread)",
    }
    for name, lexical in (("lexical", True), ("length", False)):
        judge, threshold = train_judge(train.real, train.candidates, lexical, options.keep_real, options.folds)
        report[name] = judge_report(judge, threshold, test, options.resamples, options.seed)
    report["seconds"] = {"writing": written, "judging": time.perf_counter() - start - written}
    return report


def format_fresh_judge(report: dict) -> str:
    """`eval`'s lines for the fresh judge: what it was trained and tested on, then each judge's AUCs and shares taken for real."""
    def ci(judge: dict, key: str) -> str:
        low, high = judge[f"{key}_interval"]
        return f"{judge[key]:.3f} [{low:.3f}, {high:.3f}]"

    train, test = report["counts"]["train"], report["counts"]["test"]
    chars = ", ".join(f"{name} {value:.0f}" for name, value in report["median_chars"].items())
    lines = [f"fresh judge: trained on {train['real']} real replies vs {train['candidates']} candidates "
             f"({report['comments']['train']} comments of training threads); tested on {test['real']} real replies, "
             f"{test['candidates']} candidates and {test['picks']} picks of test threads (median characters: {chars})"]
    for name, title in (("lexical", "lexical (TF-IDF + length)"), ("length", "length alone")):
        judge = report[name]
        lines.append(f"  {title:25}  ROC-AUC real vs candidates {ci(judge, 'roc_auc_real_vs_candidates')}, "
                     f"vs picks {ci(judge, 'roc_auc_real_vs_picks')}; takes {ci(judge, 'picks_taken_for_real')} of the picks "
                     f"({judge['real_taken_for_real']:.3f} of the real replies) for real; scores "
                     f"{ci(judge, 'picks_above_real_median')} of the picks above the median real reply")
    lines.append(f"  (each threshold {report['threshold_rule']}; a judge that cannot tell scores an AUC of 0.5 "
                 "and half the picks above the median real reply)")
    return "\n".join(lines)
