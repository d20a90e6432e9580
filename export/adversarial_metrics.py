"""The figures an adversarial round reports beside its judge's: distinct-n, copies of training replies,
and the targets a run must reach to call its replies human-like, checked on the last round against the first."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from replyrank.filters import COPY_WORDS, ngram_hashes, training_ngram_set, words


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): distinct word n-grams / all word n-grams over `texts`; 0 without any."""
    grams = [tuple(w[i : i + n]) for text in texts for w in [words(text)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_same_comments(candidates: Sequence[tuple[str, str]], real: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Distinct-2 of the first candidate to each held-out comment and of that comment's own real reply (as many of each).

    Two candidates to one comment share its words, which distinct-2 over every candidate counts against them.
    """
    first: dict[str, str] = {}
    for comment, reply in candidates:
        first.setdefault(comment, reply)
    own: dict[str, str] = {}
    for comment, reply in real:
        own.setdefault(comment, reply)
    shared = [comment for comment in first if comment in own]
    return {"distinct2_one_per_comment": distinct_n([first[c] for c in shared]),
            "distinct2_real_same_comments": distinct_n([own[c] for c in shared]), "distinct2_comments": len(shared)}


class CopyIndex:
    """Training replies' n-grams, hashed as the runtime's copy filter hashes them (`replyrank.filters`).

    A text copies one when it shares `n` consecutive words with it; a text shorter than `n` words copies nothing.
    """

    def __init__(self, texts: Sequence[str], n: int = COPY_WORDS):
        self.n = n
        self.ngrams = training_ngram_set(texts, n)

    def copies(self, text: str) -> bool:
        hashes = ngram_hashes(text, self.n)
        if not hashes.size or not self.ngrams.size:
            return False
        at = np.searchsorted(self.ngrams, hashes).clip(max=len(self.ngrams) - 1)
        return bool((self.ngrams[at] == hashes).any())


def targets(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The targets a run must reach, checked on the last round against the first (the generator as given): a fresh judge
    fooled while the same recipe told round 0's fakes apart; few copied training replies; distinct-2 near real replies'; and
    reply perplexity not far above round 0's."""
    first, last = rounds[0], rounds[-1]

    def check(value: float | None, met: bool, target: str) -> dict[str, Any]:
        return {"value": value, "target": target, "met": bool(met) if value is not None else None}

    # one candidate per held-out comment against those comments' own real replies, where measured
    ours, real = (("distinct2_one_per_comment", "distinct2_real_same_comments") if last.get("distinct2_real_same_comments")
                  else ("distinct2_candidates", "distinct2_real"))
    ratio = last[ours] / last[real] if last[real] else None
    perplexity = last["reply_perplexity"] / first["reply_perplexity"] if first["reply_perplexity"] else None
    return {
        "fresh_discriminator_auc": check(last["fresh_discriminator_auc"], last["fresh_discriminator_auc"] <= 0.65, "<= 0.65"),
        "recipe_on_round0_fakes_auc": check(first["fresh_discriminator_auc"], first["fresh_discriminator_auc"] >= 0.9, ">= 0.9"),
        "copy_share": check(last["copy_share"], last["copy_share"] <= 0.01, "<= 0.01"),
        "distinct2_ratio_to_real": check(ratio, ratio is not None and abs(ratio - 1) <= 0.1, "within 10% of 1"),
        "perplexity_ratio_to_round0": check(perplexity, perplexity is not None and perplexity <= 1.1, "<= 1.1"),
    }
