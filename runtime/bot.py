"""Generate, score, select: the pipeline of the 2020 GPT-2 + BERT Reddit reply bot, on ONNX Runtime.

1. the generator samples N candidate replies to the comment (prompt prefilled once, shared); a
   candidate cut off by the token limit ends at its last whole sentence (`generate.whole_sentences`);
2. the discriminator gives each the probability that a human wrote it (realism), and, where the
   bundle has a relevance scorer, the probability that it answers this comment rather than
   another thread's (relevance);
3. the upvote model predicts how well each would be received;
4. candidates that are empty, duplicates, echoes of the comment, caught by the `ReplyFilters`
   (blocklist, length, copies of the comment or of a training reply: `replyrank.filters`) or
   below the realism threshold are dropped. When no candidate reaches the threshold, the most
   realistic one is kept and `Result.note` says so (a reply bot that answers nothing to one
   comment in seven is broken); `strict=True` returns none instead;
5. the kept candidate with the highest `pick_score = realism × relevance × upvote_chance` is the
   reply (without a relevance scorer, `realism × upvote_chance`).

A ranking bundle (no generator), or a bot loaded with `generator=False` (`load_ranker`), runs steps
2-5 on replies written elsewhere (`Bot.score`) and refuses step 1 (`RankingOnly`).

The selection rule is DialogRPT's (Gao et al., 2020): the human-vs-machine and human-vs-random
probabilities (realism, relevance) multiplied into the feedback ranker's probability. `upvote_chance` is the calibrated probability that Reddit
scores a candidate above the median candidate, sigmoid(k·(u − median u)), with the k the bundle
measured on held-out sibling pairs (`ScorerSpec.pairwise_scale`). A score whose signal is nil
gets k ≈ 0, so every chance is about 0.5 and realism alone decides; a bundle that never measured
k (an engagement regressor, a version-1 bundle) is treated the same way.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import DISCRIMINATOR, GENERATOR, RELEVANCE, UPVOTES, Bundle
from .errors import InputError, RankingOnly
from .filters import COPY_WORDS, ReplyFilters, ReplyScreen
from .generate import GenerationOptions, Generator, check_replies
from .score import Scorers

# The JSON Schema of `Result.to_dict()`: what `replyrank reply --json` and `rank --json` print.
RESULT_SCHEMA = Path(__file__).with_name("result.schema.json")


@dataclass(frozen=True)
class Candidate:
    """One reply and its scores.

    realism: probability in [0, 1] that the discriminator takes the reply for human-written
             (None when the candidate was dropped before scoring: empty, duplicate, echo, filtered).
    upvotes: the upvote model's prediction, on the scale the bundle names
             (`bot.bundle.upvotes.score`); higher is better, compare within one bundle.
    kept:    whether it passed selection; `reason` says why not when it did not.
    upvote_chance: calibrated probability that Reddit scores it above the median scored candidate
             (0.5 when the bundle's upvote score has no measured signal).
    pick_score: realism × relevance × upvote_chance, the number selection ranks kept candidates by.
    relevance: probability in [0, 1] that the reply answers this comment rather than another thread's
             (None when the bundle has no relevance scorer, or the candidate was not scored).
    """

    text: str
    realism: float | None
    upvotes: float | None
    kept: bool
    reason: str | None = None
    finish_reason: str | None = None
    upvote_chance: float | None = None
    pick_score: float | None = None
    relevance: float | None = None


@dataclass(frozen=True)
class Result:
    """What `Bot.reply` and `Bot.score` return: the chosen candidate (or None and why), and every candidate, best first.

    note: set when no candidate reached the realism threshold and the most realistic one was kept.
    why:  how the best candidate won (its realism × relevance × upvote chance against the runner-up's).
    truncated, prompt_tokens: about the generator's prompt (False and 0 for `Bot.score`, which has none).
    timings_ms: score and total always; prefill and decode for `Bot.reply`.
    """

    comment: str
    best: Candidate | None
    candidates: list[Candidate]
    reason: str | None = None
    note: str | None = None
    truncated: bool = False
    prompt_tokens: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    why: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the CLI prints (its schema: `RESULT_SCHEMA`)."""
        return {
            "comment": self.comment,
            "best": asdict(self.best) if self.best else None,
            "reason": self.reason,
            "note": self.note,
            "why": self.why,
            "truncated": self.truncated,
            "prompt_tokens": self.prompt_tokens,
            "candidates": [asdict(c) for c in self.candidates],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
        }


def _or_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    # Lone surrogates (from broken decoding upstream) cannot be tokenized; replace them visibly.
    text = text.encode("utf-8", "replace").decode("utf-8")
    if not text.strip():
        raise InputError(f"{what} is empty; give some text to reply to")
    return text


class Bot:
    """A loaded bundle. Safe to call from several threads at once (ONNX Runtime sessions are).

    `filters` (default `ReplyFilters()`: no blocklist, no length cap, copies dropped) apply to `reply` and `score` alike.
    `generator=False` opens the scorers only (`load_ranker`): `score` answers as with the generator, `reply` raises
    `RankingOnly`, as it does for a ranking bundle, which has no generator to open.
    """

    def __init__(
        self, bundle_dir: str | Path, threads: int | None = None, realism_threshold: float | None = None, strict: bool = False,
        filters: ReplyFilters | None = None, generator: bool = True,
    ):
        if filters is not None and not isinstance(filters, ReplyFilters):
            raise InputError(f"filters must be a replyrank.ReplyFilters, got {type(filters).__name__}")
        self.bundle = Bundle.read(bundle_dir, verify_hashes=False)
        self.path = Path(bundle_dir).expanduser().resolve()
        spec = self.bundle.generator if generator else None
        opened = [name for name in self.bundle.parts if name != GENERATOR or spec is not None]
        # Hashing and building the sessions are independent and mostly outside the GIL:
        # doing them side by side roughly halves the load time on two cores.
        with ThreadPoolExecutor(4) as pool:
            verified = pool.submit(self.bundle.verify, parts=opened)
            opening = pool.submit(Generator, self.bundle.folder(spec), spec, threads) if spec is not None else None
            try:
                scorers = Scorers(self.bundle, threads, pool)
            finally:
                verified.result()  # a changed file is the error to report, before any broken graph it explains
            # None: this bot only ranks (`ranking_only`)
            self.generator: Generator | None = opening.result() if opening is not None else None
            self.scorers = scorers
        threshold = self.bundle.realism_threshold if realism_threshold is None else realism_threshold
        if not 0 <= threshold <= 1:
            raise InputError(f"realism threshold must be in [0, 1], got {threshold}")
        self.realism_threshold = float(threshold)
        self.strict = strict  # True: no reply rather than one below the threshold
        self.filters = filters or ReplyFilters()
        # a generator's copies of its training replies are dropped from what it writes and from what is ranked
        training_ngrams = self.bundle.read_training_ngrams() if self.filters.training_copies else None
        words = self.bundle.generator.training_ngram_words if self.bundle.generator else COPY_WORDS
        self.screen = ReplyScreen(self.filters, training_ngrams, words)

    @property
    def ranking_only(self) -> bool:
        """True when this bot only ranks: its bundle has no generator, or it was loaded without it."""
        return self.generator is None

    @property
    def sampling(self) -> GenerationOptions:
        """The bundle's deployment sampling options: `reply`'s defaults (`RankingOnly` for a ranking bundle, which has none)."""
        if self.bundle.generator is None:
            raise RankingOnly(self._why_no_replies())
        return self.bundle.generator.sampling

    def _why_no_replies(self) -> str:
        if self.bundle.generator is None:
            return (f"{self.path} is a ranking bundle (no generator): it ranks replies written elsewhere (`replyrank rank`, "
                    "Bot.score) but writes none; give a bundle with a generator (`replyrank build-default` builds the default one)")
        return "this bot was loaded without its generator (generator=False, load_ranker); load it with generator=True to write replies"

    def score(self, comment: str, replies: list[str]) -> Result:
        """Score replies written elsewhere; the same Result as `reply`, candidates best first with selection applied."""
        comment = _check_text(comment, "comment")
        if isinstance(replies, str) or not replies:
            raise InputError("give a list of at least one reply to rank")
        for reply in replies:
            if not isinstance(reply, str):
                raise InputError(f"each reply must be a string, got {type(reply).__name__}")
        check_replies(replies)  # at most MAX_REPLIES, each at most MAX_REPLY_CHARS
        replies = [reply.encode("utf-8", "replace").decode("utf-8") for reply in replies]
        start = time.perf_counter()
        candidates, reason, note = self._select(comment, replies, [None] * len(replies))
        elapsed_ms = (time.perf_counter() - start) * 1e3
        best = candidates[0] if candidates[0].kept else None
        timings = {"score": elapsed_ms, "total": elapsed_ms}
        return Result(comment, best, candidates, reason, note, timings_ms=timings, why=self._why(candidates))

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
        """Every score of each (comment, reply) pair, by score name (`realism`, `upvotes`, `relevance`): the raw numbers, for pairs
        of many comments at once, without filters or selection (what `eval` measures)."""
        pairs = list(pairs)
        if not all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(t, str) for t in p) for p in pairs):
            raise InputError("score_pairs takes (comment, reply) tuples of two strings")
        scores = self.scorers.score(pairs)
        return {self.bundle.scorers[name].score.name: values for name, values in scores.items()}

    def reply(self, comment: str, options: GenerationOptions | None = None, **overrides: Any) -> Result:
        """Write `options.candidates` replies to `comment`, score them, and pick the best.

        `options` default to the bundle's deployment sampling (`self.sampling`); `overrides` replace single fields.
        """
        if self.generator is None:
            raise RankingOnly(self._why_no_replies())
        options = replace(options or self.sampling, **overrides)
        options.check()
        comment = _check_text(comment, "comment")
        start = time.perf_counter()
        sample = self.generator.sample(comment, options)
        prompt, generations, prefill_s = sample.prompt, sample.generations, sample.prefill_s
        generated = time.perf_counter()
        texts = [g.text for g in generations]
        candidates, reason, note = self._select(comment, texts, [g.finish_reason for g in generations])
        end = time.perf_counter()
        best = candidates[0] if candidates and candidates[0].kept else None
        return Result(
            comment=comment,
            best=best,
            candidates=candidates,
            reason=reason,
            note=note,
            truncated=prompt.truncated,
            prompt_tokens=len(prompt.ids),
            why=self._why(candidates),
            timings_ms={
                "prefill": prefill_s * 1e3,
                "decode": (generated - start - prefill_s) * 1e3,  # tokenizing the prompt counts here too
                "score": (end - generated) * 1e3,
                "total": (end - start) * 1e3,
            },
        )

    def _select(self, comment: str, texts: list[str], finish: list[str | None]) -> tuple[list[Candidate], str | None, str | None]:
        # drop what cannot be a reply before paying for scoring it
        reasons: list[str | None] = []
        seen: set[str] = set()
        for text in texts:
            key = _normalized(text)
            if not key:
                reasons.append("empty")
            elif key == _normalized(comment):
                reasons.append("echoes the comment")
            elif key in seen:
                reasons.append("duplicate")
            else:
                reasons.append(self.screen.reason(text, comment))
            seen.add(key)
        scored = [i for i, r in enumerate(reasons) if r is None]
        realism = np.full(len(texts), np.nan)
        upvotes = np.full(len(texts), np.nan)
        relevance = np.full(len(texts), np.nan)
        if scored:
            scores = self.scorers(comment, [texts[i] for i in scored])
            realism[scored], upvotes[scored] = scores[DISCRIMINATOR], scores[UPVOTES]
            if RELEVANCE in scores:
                relevance[scored] = scores[RELEVANCE]
        realistic = [i for i in scored if realism[i] >= self.realism_threshold]
        note = None
        if scored and not realistic and not self.strict:
            # a reply is still wanted: keep the most realistic candidate, and say that it fell short
            realistic = [max(scored, key=lambda i: realism[i])]
            note = (
                f"no candidate reached the realism threshold {self.realism_threshold:.3f}; "
                f"kept the most realistic one ({realism[realistic[0]]:.3f})"
            )
        for i in scored:
            if i not in realistic:
                reasons[i] = f"realism {realism[i]:.3f} < threshold {self.realism_threshold:.3f}"
        chance = np.full(len(texts), np.nan)
        if scored:
            chance[scored] = upvote_chance(upvotes[scored], self.bundle.upvotes.pairwise_scale)
        prior = realism * np.where(np.isnan(relevance), 1.0, relevance) if self.bundle.relevance is not None else realism
        candidates = [
            Candidate(text, _or_none(realism[i]), _or_none(upvotes[i]), reasons[i] is None, reasons[i], finish[i],
                      _or_none(chance[i]), _or_none(prior[i] * chance[i]), _or_none(relevance[i]))
            for i, text in enumerate(texts)
        ]
        # best first: kept ones by pick score, then scored ones by pick score, then the unscored
        candidates.sort(key=lambda c: (not c.kept, c.pick_score is None, -(c.pick_score or 0.0)))
        reason = None
        if not candidates[0].kept:
            reason = "no candidate passed selection" + (
                f" (best realism {np.nanmax(realism):.3f} < threshold {self.realism_threshold:.3f})" if scored else " (all empty, duplicates or filtered)"
            )
        return candidates, reason, note


    def _why(self, candidates: list[Candidate]) -> str | None:
        best = candidates[0]
        if not best.kept or best.pick_score is None:
            return None
        def factors(c: Candidate, named: bool) -> str:
            parts = [("realism", c.realism), ("relevance", c.relevance), ("upvote chance", c.upvote_chance)]
            return " × ".join(f"{name} {value:.3f}" if named else f"{value:.3f}" for name, value in parts if value is not None)

        won = f"{factors(best, True)} = {best.pick_score:.3f}"
        if self.bundle.upvotes.pairwise_scale is None:
            won += f" (this bundle's {self.bundle.upvotes.score.name} score has no measured signal, so it does not decide)"
        runner_up = next((c for c in candidates[1:] if c.kept), None)
        if runner_up is not None and runner_up.pick_score is not None:
            won += f"; next best {factors(runner_up, False)} = {runner_up.pick_score:.3f}"
        return won


def upvote_chance(upvotes: np.ndarray, pairwise_scale: float | None) -> np.ndarray:
    """sigmoid(k·(u − median u)): the calibrated chance that each candidate outscores the median one; 0.5 without a measured k."""
    k = pairwise_scale or 0.0
    return 1 / (1 + np.exp(-k * (upvotes - np.median(upvotes))))


def load(
    bundle_dir: str | Path | None = None, threads: int | None = None, realism_threshold: float | None = None, strict: bool = False,
    filters: ReplyFilters | None = None, generator: bool = True,
) -> Bot:
    """Load a bundle (default: `$REPLYRANK_BUNDLE`, else the default bundle in the cache folder).

    `generator=False` opens only the scorers (`load_ranker`); a ranking bundle loads either way and only ranks.
    """
    from .locations import cpu_mismatch, default_bundle_dir, ranking_bundle_dir, stale_default

    where = bundle_dir if bundle_dir is not None else default_bundle_dir() if generator else ranking_bundle_dir()
    bot = Bot(where, threads, realism_threshold, strict, filters, generator)
    if bundle_dir is None and (why := stale_default(bot.bundle)):
        warnings.warn(why, stacklevel=2)
    if bot.generator is not None and (why := cpu_mismatch(bot.bundle)):
        warnings.warn(why, stacklevel=2)
    return bot


def load_ranker(
    bundle_dir: str | Path | None = None, threads: int | None = None, realism_threshold: float | None = None, strict: bool = False,
    filters: ReplyFilters | None = None,
) -> Bot:
    """Open a bundle's scorers only, for apps that rank replies written elsewhere: `Bot.score` gives the same `Result`
    as with the generator loaded, which is neither read nor held in memory.

    Default folder: `$REPLYRANK_BUNDLE`, else the default bundle where it is built, else the default ranking bundle
    (`replyrank build-default --rank-only`).
    """
    return load(bundle_dir, threads, realism_threshold, strict, filters, generator=False)
