"""Adversarial rounds (issue #13): fine-tune the generator toward the replies its discriminator takes for human.

The GPT-2 + BERT reply bot's loop, done as rejection-sampling fine-tuning (best-of-N
distillation: sample N, keep what a judge ranks best, fine-tune on it; Llama 2's "rejection
sampling" rounds, RAFT). Round 0 measures the generator as given. Round k >= 1 first fine-tunes
round k-1's generator on the candidates round k-1's discriminator ranked best (the best of N
per training comment, by realism, or by realism x upvote chance when an upvote model is given),
mixed with real pairs, at a low learning rate for one pass: the real pairs and the small steps
anchor it to the previous round in place of an explicit KL term. Or, with `method="dpo"`, round k
fine-tunes with DPO on pairs (a training comment, its real reply preferred over the round k-1
candidate that round k-1's discriminator found least human), with round k-1's generator as DPO's
reference, its KL anchor: SPIN's self-play pairs (Chen et al., 2024), the discriminator picking
the negative. Then every round:

1. samples its generator's replies with the deployment's settings: through replyrank's own ONNX
   runtime (`recipes.runtime_generator`, `recipes.real_and_fake`: the discriminator's fakes are
   sampled the same way as `replyrank train discriminator` samples them), or, on a GPU, with
   transformers' batched `generate` and the same prompt and options (`recipes.TorchSampler`);
2. trains a *fresh* judge: a pair model (`train_discriminator`, from the same base every round) on
   real replies vs this round's fakes, stacked with the reply's length (`Judge`) on rows it did not
   train on, so a generator cannot pass with replies a length rule tells apart: its held-out AUC
   falls only if the replies got harder to tell;
3. measures on held-out threads (the `test` split of `dumps.split_by_thread`): that AUC, round 0's
   discriminator's AUC on this round's fakes, reply perplexity on real replies, distinct-2 of the
   candidates and of as many real replies (and of one candidate per comment against those comments'
   own real replies, which the target compares), the share of candidates that copy a training reply
   (`copy_words` consecutive words in common), mean predicted upvotes, and the share of
   candidates at realism >= threshold under this round's discriminator;
4. ranks N candidates per training comment with that discriminator for the next round's fine-tune.

With a LoRA rank, the rounds train one adapter over the given generator, continued from round to
round (round k starts from round k-1's adapter), so the last round's `generator/adapter` alone
carries every round's change. Held-out threads are the `test` split of the training files, or,
given `held_out` files, every pair of those (other subreddits, never trained on).

Each round is built in WORK/.round-K.partial and moved into place as WORK/round-K when complete.
A re-run skips finished rounds; inside an unfinished one it keeps the steps already done (the
samples, the discriminator, the fine-tuned generator; the trainers resume from their checkpoints).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from replyrank.bundle import REALISM_THRESHOLD
from replyrank.bot import upvote_chance
from replyrank.filters import COPY_WORDS, ngram_hashes, training_ngram_set, words
from replyrank.generate import Generator
from replyrank.metrics import roc_auc

from . import rankers
from .assemble import DEPLOYMENT
from .convert import GENERATOR_SPEC, SCORER_SPEC, ExportError, default_template, load_causal_lm, split_gguf
from .folders import move_into_place
from .recipes import FAKES_PER_COMMENT, TorchSampler, load_split, real_and_fake, runtime_generator, sample_replies
from .train import (
    TRAINING_RECORD, TrainOptions, pairs_perplexity, predict, torch_device, train_discriminator, train_generator, train_preference,
    training_record,
)

ROUND = "round.json"  # a round's figures; its presence marks the round finished
SAMPLES = "samples.json"  # the round's sampled replies (kept so an interrupted round does not sample again)
DISTILL = "distill.json"  # what the round's discriminator picked for the next round's fine-tune
ROUNDS = "rounds.json"  # every round's figures, in the final model folder
PLOT = "rounds.svg"
SETTINGS = "settings.json"  # what the work folder was started with; a re-run must match it
JUDGE = "judge.json"  # a round's judge: the weights stacking its pair model with reply length
PERPLEXITY_PAIRS = 512
CALIBRATION_SHARE = 0.2  # of the discriminator's training rows, held back from the pair model to fit the judge on
METHODS = ("best-of-n", "dpo")


@dataclass
class AdversarialOptions:
    rounds: int = 3  # fine-tuning rounds, at most; round 0 measures the generator as given
    # stop after the first fine-tuning round whose fresh judge's held-out AUC is at most this: the
    # discriminator can no longer tell (None: run every round)
    until_auc: float | None = None
    candidates: int = DEPLOYMENT.candidates  # N of best-of-N, per training comment
    tune_comments: int = 1000  # training comments per round whose best candidates are distilled
    fakes: int = 1000  # generated replies each round's discriminator trains on
    held_out_comments: int = 100  # held-out comments measured each round (FAKES_PER_COMMENT candidates each)
    keep: int = 1  # candidates distilled per comment
    real_mix: float = 1.0  # real pairs (of other training comments) per distilled candidate: the anchor to real replies
    threshold: float = REALISM_THRESHOLD  # a candidate counts as kept at realism >= this
    copy_words: int = COPY_WORDS  # a candidate sharing this many consecutive words with a training reply copies it
    seed: int = 0
    generator: TrainOptions = field(default_factory=lambda: TrainOptions(learning_rate=1e-5, batch_size=8))
    discriminator: TrainOptions = field(default_factory=lambda: TrainOptions(learning_rate=3e-5, batch_size=16, max_length=128))
    # how round k fine-tunes on round k-1's judgements: "best-of-n" distills the candidates the discriminator
    # ranked best; "dpo" prefers each tune comment's real reply over the candidate it found least human (SPIN's
    # pairs, with the discriminator picking the negative), against the previous round as the reference
    method: str = "best-of-n"
    dpo_beta: float = 0.1  # DPO's beta: how far from the reference the policy may move
    dpo_nll: float = 0.0  # weight of the chosen reply's NLL added to the DPO loss (RPO)
    dpo_length_normalized: bool = False  # compare per-token log-ratios (Tulu 3's length-normalized DPO; `train.dpo_margin`)
    dpo_replay: int = 0  # also train on the DPO pairs of this many rounds before the last (a replay buffer of old negatives)
    # rank the next fine-tune's candidates by every round's judge so far (the mean of their logits), not the
    # latest alone: a candidate showing a tell an earlier judge caught still counts as less human
    judge_history: bool = False
    threads: int | None = None  # ONNX Runtime threads for sampling (None: the runtime's default)
    # keep only pairs whose reply the deployment could write, at most this many generator tokens
    # (None: every reply): a generator cut at max_new_tokens is otherwise told apart by its length alone
    max_reply_tokens: int | None = None


# --- figures -------------------------------------------------------------------------------


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): distinct word n-grams / all word n-grams over `texts`; 0 without any."""
    grams = [tuple(w[i : i + n]) for text in texts for w in [words(text)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


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
    """Issue #13's targets, checked on the last round against round 0."""
    first, last = rounds[0], rounds[-1]

    def check(value: float | None, met: bool, target: str) -> dict[str, Any]:
        return {"value": value, "target": target, "met": bool(met) if value is not None else None}

    # one candidate per held-out comment against those comments' own real replies, where measured: two
    # candidates to one comment share its words, which all-candidates distinct-2 counts against them
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


# --- models --------------------------------------------------------------------------------


def _stored_template(source: str) -> str | None:
    """The prompt template a generator was trained with, where it keeps one (the export reads the same file)."""
    stored = Path(split_gguf(source)[0]) / GENERATOR_SPEC
    return json.loads(stored.read_text()).get("prompt_template") if stored.is_file() else None


class PairScorer:
    """A trained pair model in torch, scoring (comment, reply) pairs.

    A discriminator (2 labels: P(human)), a 1-output regressor (its output mapped back with its
    stored scale, as the bundle maps it), or a two-head scorer of `export.rankers` (`train upvotes`
    OUT), read here for its upvote head: a Bradley-Terry logit, where only differences matter.
    """

    def __init__(self, folder: Path, options: TrainOptions):
        self.device = torch_device(options)
        self.max_length = options.max_length
        self.two_heads = rankers.is_pair_model(folder)
        self.scale, self.offset = 1.0, 0.0
        self.pairwise_scale: float | None = 1.0  # the k of selection's upvote chance: 1 on a regressor's standardized output
        if self.two_heads:
            self.model, self.tokenizer, info = rankers.load(folder)
            self.model.to(self.device)
            self.pairwise_scale = info.get("heads", {}).get("upvotes", {}).get("bt_scale")  # measured on validation pairs
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).to(self.device).eval()
        scaling = Path(folder) / SCORER_SPEC
        extra = json.loads(scaling.read_text()) if scaling.is_file() else {}
        self.scale, self.offset = float(extra.get("output_scale", 1.0)), float(extra.get("output_offset", 0.0))

    def raw(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(human) for a discriminator; a regressor's output as trained (standardized for a regression); a two-head scorer's upvote logit."""
        if not pairs:
            return np.zeros(0)
        if self.two_heads:
            return rankers.predict(self.model, self.tokenizer, list(pairs), self.max_length)[1]
        return predict(self.model, self.tokenizer, list(pairs), self.device, self.max_length)

    def __call__(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Scores in the model's own units."""
        return self.raw(pairs) * self.scale + self.offset


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


def _logistic(x: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return 1 / (1 + np.exp(-(x @ w[:-1] + w[-1])))


class Judge:
    """A round's judge of how human a reply reads: its fresh pair model stacked with the reply's length.

    A one-epoch pair model can miss what a length rule sees (the first DPO run's round 2: reply
    length told its replies from real ones at AUC 0.682, the pair model at 0.599), so a generator
    could pass it with replies no reader would take for human. P(human) is a logistic regression
    on [logit of the pair model's P(human), `length_features`], fitted on discriminator training
    rows the pair model never trained on (`CALIBRATION_SHARE` of them): never much weaker than either.
    """

    def __init__(self, pair: PairScorer, weights: Sequence[float]):
        self.pair, self.weights = pair, list(weights)

    def features(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        p = np.clip(self.pair.raw(pairs), 1e-6, 1 - 1e-6)
        return np.hstack([np.log(p / (1 - p))[:, None], length_features(pairs)])

    def raw(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """P(human) of each (comment, reply)."""
        return _logistic(self.features(pairs), self.weights) if pairs else np.zeros(0)

    @classmethod
    def fit(cls, pair: PairScorer, real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]]) -> tuple[Judge, dict[str, Any]]:
        """The judge, and its record: its weights and a length-only baseline's, fitted on the same rows."""
        if min(len(real), len(fake)) < 2:
            raise ExportError(f"too few held-back rows to fit the judge: {len(real)} real, {len(fake)} generated; give more --fakes")
        rows, labels = list(real) + list(fake), np.r_[np.ones(len(real)), np.zeros(len(fake))]
        judge = cls(pair, fit_logistic(cls(pair, []).features(rows), labels).tolist())
        record = {"weights": judge.weights, "features": ["pair model logit", "log1p(chars)", "log1p(chars)^2"],
                  "length_weights": fit_logistic(length_features(rows), labels).tolist(), "real": len(real), "generated": len(fake)}
        return judge, record


def _auc(scorer: PairScorer | Judge, real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]]) -> float:
    return roc_auc([1] * len(real) + [0] * len(fake), scorer.raw(list(real) + list(fake)))


def _hold_back(rows: Sequence[tuple[str, str]], share: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(the first 1 - share of rows, the rest), cut where the comment changes: a comment's replies stay on one side."""
    cut = round(len(rows) * (1 - share))
    while 0 < cut < len(rows) and rows[cut][0] == rows[cut - 1][0]:
        cut += 1
    return list(rows[:cut]), list(rows[cut:])


def distill(
    candidates: Sequence[tuple[str, str]], realism: np.ndarray, upvotes: np.ndarray | None, real: Sequence[tuple[str, str]],
    copy_index: CopyIndex, options: AdversarialOptions, upvote_scale: float | None = 1.0,
) -> dict[str, Any]:
    """The next fine-tune's data: per comment the `keep` best candidates, then `real_mix` real pairs per candidate.

    Best = most realistic; with an upvote model, the runtime's selection rule, realism x
    sigmoid(k·(u - median u)) (`replyrank.bot.upvote_chance`; u is the upvote model's raw output,
    k a two-head scorer's measured scale, or 1 for a standardized regressor), so a reply must read
    human *and* be predicted to land.
    Empty replies and copies of training replies are never distilled.
    """
    rank = realism * upvote_chance(upvotes, upvote_scale) if upvotes is not None and upvotes.size else realism
    by_comment: dict[str, list[int]] = {}
    for i, (comment, reply) in enumerate(candidates):
        if reply.strip() and not copy_index.copies(reply):
            by_comment.setdefault(comment, []).append(i)
    picked = [row for rows in by_comment.values() for row in sorted(rows, key=lambda row: -rank[row])[: options.keep]]
    pairs = [list(candidates[i]) for i in picked]
    anchor = [list(pair) for pair in real[: round(options.real_mix * len(pairs))]]
    return {
        "pairs": pairs, "real": anchor,
        "stats": {
            "candidates": len(candidates), "comments": len(by_comment), "distilled": len(pairs), "real_pairs": len(anchor),
            "mean_realism_all": float(realism.mean()) if realism.size else None,
            "mean_realism_distilled": float(realism[picked].mean()) if picked else None,
        },
    }


def preferences(
    candidates: Sequence[tuple[str, str]], realism: np.ndarray, real: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """DPO's data: per comment with a real reply, (comment, its real reply, the candidate judged least human)."""
    own: dict[str, str] = {}
    for comment, reply in real:
        if reply.strip():
            own.setdefault(comment, reply)
    worst: dict[str, int] = {}
    for i, (comment, reply) in enumerate(candidates):
        if comment in own and reply.strip() and reply.strip() != own[comment].strip():
            if comment not in worst or realism[i] < realism[worst[comment]]:
                worst[comment] = i
    picked = list(worst.values())
    return {
        "preferences": [[candidates[i][0], own[candidates[i][0]], candidates[i][1]] for i in picked],
        "stats": {
            "candidates": len(candidates), "comments": len(worst), "preference_pairs": len(picked),
            "mean_realism_all": float(realism.mean()) if realism.size else None,
            "mean_realism_rejected": float(realism[picked].mean()) if picked else None,
        },
    }


# --- rounds --------------------------------------------------------------------------------


@dataclass
class RoundData:
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]  # held-out threads, in one fixed order for every round
    copy_index: CopyIndex

    @classmethod
    def load(cls, files: Sequence[str], options: AdversarialOptions, held_out: Sequence[str] = (), generator: str | None = None) -> RoundData:
        """Training pairs from `files`; held-out pairs from `held_out` files, or from the test threads of `files`."""
        from replyrank.dumps import load_pairs

        split = load_split(files, seed=options.seed)
        train = [(p.parent, p.reply) for p in split["train"]]
        test = [(p.parent, p.reply) for p in (load_pairs(held_out) if held_out else split["test"])]
        if options.max_reply_tokens is not None:
            from transformers import AutoTokenizer

            location, extra = split_gguf(generator or "")
            tokenizer = AutoTokenizer.from_pretrained(location, **extra)

            def fits(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
                lengths = [len(ids) for ids in tokenizer([reply for _, reply in rows], add_special_tokens=False).input_ids] if rows else []
                return [row for row, length in zip(rows, lengths) if length <= options.max_reply_tokens]

            train, test = fits(train), fits(test)
        random.Random(f"held-out:{options.seed}").shuffle(test)
        if len(test) < 2 * FAKES_PER_COMMENT:
            raise ExportError(f"the held-out threads hold {len(test)} pairs; give more data")
        return cls(train, test, CopyIndex([reply for _, reply in train], options.copy_words))

    def for_round(self, k: int, options: AdversarialOptions) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
        """(discriminator rows, fine-tune comments' rows, real anchor pairs): training pairs shuffled anew each round, in disjoint slices.

        `real_and_fake` writes fakes for the first fakes/FAKES_PER_COMMENT comments and takes real
        replies from the next ones (as many as fakes); the fine-tune's comments come after both, and
        the real pairs mixed into the fine-tune (`real_mix` per tune comment) after those.
        """
        rows = list(self.train)
        random.Random(f"round:{options.seed}:{k}").shuffle(rows)
        used = (options.fakes // FAKES_PER_COMMENT) + options.fakes
        tune_end = used + options.tune_comments
        anchor = [row for row in rows[tune_end:][: math.ceil(options.real_mix * options.tune_comments)] if row[1].strip()]
        return rows[:used], rows[used:tune_end], anchor


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    partial.replace(path)


def _settings(files: Sequence[str], generator: str, discriminator_base: str, upvotes: str | None, options: AdversarialOptions) -> dict[str, Any]:
    """What decides a run's results; the device and thread count may change between a run and its resume."""
    settings = asdict(options)
    settings.pop("threads")
    for trainer in ("generator", "discriminator"):
        settings[trainer].pop("device")
    return {"data": [str(f) for f in files], "generator": generator, "discriminator_base": discriminator_base, "upvotes": upvotes, **settings}


def _distinct_same_comments(candidates: Sequence[tuple[str, str]], real: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Distinct-2 of the first candidate to each held-out comment and of that comment's own real reply (as many of each)."""
    first: dict[str, str] = {}
    for comment, reply in candidates:
        first.setdefault(comment, reply)
    own: dict[str, str] = {}
    for comment, reply in real:
        own.setdefault(comment, reply)
    shared = [comment for comment in first if comment in own]
    return {"distinct2_one_per_comment": distinct_n([first[c] for c in shared]),
            "distinct2_real_same_comments": distinct_n([own[c] for c in shared]), "distinct2_comments": len(shared)}


def _sampler(source: str, work: Path, options: AdversarialOptions) -> Generator | TorchSampler:
    """transformers' batched `generate` where the generator trains on a GPU, else replyrank's own runtime."""
    if torch_device(options.generator).startswith("cuda"):
        return TorchSampler(source, _stored_template(source))
    return runtime_generator(source, work, DEPLOYMENT, options.threads)


def _replayed(k: int, options: AdversarialOptions) -> list[int]:
    """The rounds whose DPO pairs round k trains on: k-1 and the `dpo_replay` rounds before it."""
    return list(range(max(0, k - 1 - options.dpo_replay), k))


def _judge_of(folder: Path, options: AdversarialOptions) -> Judge:
    return Judge(PairScorer(folder / "discriminator", options.discriminator), json.loads((folder / JUDGE).read_text())["weights"])


def _ranking_realism(k: int, work: Path, judge: Judge, pairs: Sequence[tuple[str, str]], options: AdversarialOptions) -> np.ndarray:
    """P(human) that ranks the next fine-tune's candidates: round k's judge, or with `judge_history` every judge of rounds 0..k.

    The judges' probabilities are averaged as logits (each judge is a calibrated logistic), so one
    judge's confident complaint is not washed out by another's shrug.
    """
    p = judge.raw(pairs)
    if not options.judge_history or k == 0:
        return p
    judged = np.clip([p] + [_judge_of(work / f"round-{j}", options).raw(pairs) for j in range(k)], 1e-6, 1 - 1e-6)
    return 1 / (1 + np.exp(-np.mean(np.log(judged) - np.log1p(-judged), axis=0)))


def run_round(
    k: int, work: Path, data: RoundData, generator: str, discriminator_base: str, upvotes: PairScorer | None, options: AdversarialOptions,
) -> dict[str, Any]:
    """Round k in WORK/.round-K.partial, moved into place as WORK/round-K; returns its figures."""
    started = time.perf_counter()
    staging = work / f".round-{k}.partial"
    staging.mkdir(exist_ok=True)
    disc_rows, tune_rows, anchor_rows = data.for_round(k, options)
    last = k == options.rounds

    # 1. this round's generator: the given one, or the previous one fine-tuned on what its discriminator picked
    fine_tune = None
    source = generator
    if k > 0:
        source = str(staging / "generator")
        base = str(work / f"round-{k - 1}" / "generator") if k > 1 else generator
        adapter = None
        if options.generator.lora_rank and k > 1:  # one adapter over the given generator, continued
            base, adapter = generator, work / f"round-{k - 1}" / "generator" / "adapter"
        if not (staging / "generator" / "config.json").is_file():
            picked = json.loads((work / f"round-{k - 1}" / DISTILL).read_text())
            if options.method == "dpo":
                # round k-1's pairs, then those of the dpo_replay rounds before it: negatives an earlier judge picked stay
                # dispreferred, so a round cannot answer the last judge's complaint by bringing an older tell back
                triples = [tuple(t) for j in _replayed(k, options) for t in json.loads((work / f"round-{j}" / DISTILL).read_text())["preferences"]]
                train_preference(triples, base, staging / "generator", options.generator,
                                 _stored_template(base), adapter=adapter, beta=options.dpo_beta, nll_weight=options.dpo_nll,
                                 length_normalized=options.dpo_length_normalized)
            else:
                pairs = [(comment, reply) for comment, reply in picked["pairs"] + picked["real"]]
                if not pairs:
                    raise ExportError(f"round {k - 1} distilled no candidate to fine-tune on; sample more (--tune-comments, --candidates)")
                # held-out perplexity is measured below for every round alike, so the trainer gets no valid pairs
                train_generator(pairs, [], base, staging / "generator", options.generator, _stored_template(base), adapter=adapter)
        metrics = (training_record(staging / "generator") or {}).get("metrics", {})
        fine_tune = {"method": options.method, "from": base, "adapter_from": str(adapter) if adapter else None,
                     "train_pairs": metrics.get("train_pairs"), "final_loss": metrics.get("final_loss"),
                     "final_reward_accuracy": metrics.get("final_reward_accuracy"), "length_normalized": metrics.get("length_normalized"),
                     "pairs_of_rounds": _replayed(k, options) if options.method == "dpo" else [k - 1]}

    # 2. its replies, through replyrank's own runtime with the deployment's settings
    samples_path = staging / SAMPLES
    if samples_path.is_file():
        samples = json.loads(samples_path.read_text())
    else:
        with tempfile.TemporaryDirectory(prefix="replyrank-round-") as tmp:
            model = _sampler(source, Path(tmp), options)
            sets = real_and_fake(model, disc_rows, data.test, options.fakes // FAKES_PER_COMMENT, options.held_out_comments,
                                 Path(tmp), DEPLOYMENT, options.threads, seed=(options.seed << 8) + 2 * k)
            tune = [] if last else sample_replies(
                model, [comment for comment, _ in tune_rows], replace(DEPLOYMENT, candidates=options.candidates), Path(tmp),
                options.threads, seed=(options.seed << 8) + 2 * k + 1,
            )
        samples = dict(zip(("real_train", "fake_train", "real_test", "fake_test"), sets), tune=tune,
                       sampler="transformers generate" if isinstance(model, TorchSampler) else "replyrank runtime (ONNX)")
        del model
        _write_json(samples_path, samples)
    real_test = [tuple(p) for p in samples["real_test"]]
    fake_test = [tuple(p) for p in samples["fake_test"]]

    # 3. a fresh judge: a pair model on real replies vs these fakes, then stacked with reply length on rows it did not see
    disc_dir = staging / "discriminator"
    real_train, real_held = _hold_back([tuple(p) for p in samples["real_train"]], CALIBRATION_SHARE)
    fake_train, fake_held = _hold_back([tuple(p) for p in samples["fake_train"]], CALIBRATION_SHARE)
    if (disc_dir / "config.json").is_file():
        disc_metrics = (training_record(disc_dir) or {})["metrics"]
    else:
        disc_metrics = train_discriminator(real_train, fake_train, real_test, fake_test, discriminator_base, disc_dir, options.discriminator)
    pair = PairScorer(disc_dir, options.discriminator)
    if (staging / JUDGE).is_file():
        judge_record = json.loads((staging / JUDGE).read_text())
        judge = Judge(pair, judge_record["weights"])
    else:
        judge, judge_record = Judge.fit(pair, real_held, fake_held)
        _write_json(staging / JUDGE, judge_record)

    # 4. the figures, on held-out threads
    test_realism = judge.raw(real_test + fake_test)  # held-out real replies, then this round's candidates
    realism = test_realism[len(real_test):]
    first = judge if k == 0 else _judge_of(work / "round-0", options)
    test_labels = np.r_[np.ones(len(real_test)), np.zeros(len(fake_test))]
    model, tokenizer = load_causal_lm(source)
    model.to(torch_device(options.generator)).eval()
    perplexity_pairs = data.test[options.held_out_comments :][:PERPLEXITY_PAIRS]
    template = _stored_template(source) or default_template(tokenizer)
    perplexity = pairs_perplexity(model, tokenizer, template, perplexity_pairs, options.generator)
    del model
    replies = [reply for _, reply in fake_test]
    figures: dict[str, Any] = {
        "round": k,
        "generator": str(work / f"round-{k}" / "generator") if k > 0 else generator,  # where it lies once the round is in place
        "fresh_discriminator_auc": roc_auc(test_labels, test_realism),  # the judge: pair model and length
        "fresh_pair_model_auc": disc_metrics["roc_auc"],  # the pair model alone
        "fresh_pair_model_balanced_accuracy": disc_metrics["balanced_accuracy"],
        "length_baseline_auc": roc_auc(test_labels, _logistic(length_features(real_test + fake_test), judge_record["length_weights"])),
        "round0_discriminator_auc": _auc(first, real_test, fake_test),
        "reply_perplexity": perplexity,
        "distinct2_candidates": distinct_n(replies),
        "distinct2_real": distinct_n([reply for _, reply in real_test]),
        **_distinct_same_comments(fake_test, data.test[: options.held_out_comments]),
        "copy_share": sum(map(data.copy_index.copies, replies)) / max(1, len(replies)),
        "mean_predicted_upvotes": float(upvotes(fake_test).mean()) if upvotes is not None and fake_test else None,
        "mean_predicted_upvotes_real": float(upvotes(real_test).mean()) if upvotes is not None and real_test else None,
        "share_kept": float((realism >= options.threshold).mean()) if realism.size else None,
        "threshold": options.threshold,
        "held_out": {"comments": len({c for c, _ in fake_test}), "candidates": len(fake_test), "real_replies": len(real_test),
                     "perplexity_pairs": len(perplexity_pairs)},
        "discriminator_train_examples": disc_metrics["train_examples"],
        "judge": judge_record,
        "fine_tune": fine_tune,
        "sampler": samples.get("sampler"),
        "distilled": None,
    }

    # 5. the next round's fine-tune data, ranked by this round's discriminator
    if not last:
        tune = [tuple(p) for p in samples["tune"]]
        tune_realism = _ranking_realism(k, work, judge, tune, options)
        if options.method == "dpo":
            picked = preferences(tune, tune_realism, tune_rows)
        else:
            scores = upvotes.raw(tune) if upvotes is not None else None  # DPO's pairs take no upvote score
            scale = upvotes.pairwise_scale if upvotes is not None else None
            picked = distill(tune, tune_realism, scores, anchor_rows, data.copy_index, options, scale)
        picked["stats"]["ranked_by_rounds"] = list(range(k + 1)) if options.judge_history else [k]
        _write_json(staging / DISTILL, picked)
        figures["distilled"] = picked["stats"]
    figures["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(staging / ROUND, figures)
    move_into_place(staging, work / f"round-{k}")
    print(f"round {k}: {json.dumps({n: v for n, v in figures.items() if isinstance(v, (int, float))})}", file=sys.stderr)
    return figures


def adversarial_rounds(
    files: Sequence[str], generator: str, discriminator_base: str, out: str | Path, options: AdversarialOptions | None = None,
    upvotes: str | None = None, work: str | Path | None = None, held_out: Sequence[str] = (),
) -> dict[str, Any]:
    """Rounds 0..K into WORK (default OUT.rounds), then the last round's generator into OUT with every round's figures.

    OUT is a model folder for `replyrank export --generator OUT`; its training record carries the
    rounds, which the export writes into the bundle's `training` entry. Round K's discriminator
    (WORK/round-K/discriminator) was trained on that generator's own fakes: the bundle's discriminator.
    """
    options = options or AdversarialOptions()
    if options.rounds < 1:
        raise ExportError("give at least one round (--rounds 1)")
    if options.method not in METHODS:
        raise ExportError(f"unknown method {options.method!r}; choose one of {', '.join(METHODS)}")
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not (out / ROUNDS).is_file():
        raise ExportError(f"{out} exists and is not the output of an adversarial run; choose an empty or new --out")
    work = Path(work).expanduser().resolve() if work else out.with_name(f"{out.name}.rounds")
    work.mkdir(parents=True, exist_ok=True)
    settings = {**_settings(files, generator, discriminator_base, upvotes, options), "held_out": [str(f) for f in held_out]}
    if (work / SETTINGS).is_file():
        before = json.loads((work / SETTINGS).read_text())
        changed = sorted(name for name in set(before) | set(settings) if before.get(name) != settings.get(name))
        if changed:
            raise ExportError(f"{work} holds rounds run with other settings ({', '.join(changed)}); rerun with those, or give another --work")
    _write_json(work / SETTINGS, settings)

    data = RoundData.load(files, options, held_out, generator)
    scorer = PairScorer(Path(upvotes), options.discriminator) if upvotes else None
    rounds = []
    for k in range(options.rounds + 1):
        done = work / f"round-{k}" / ROUND
        if done.is_file():
            print(f"round {k}: finished before, kept ({done})", file=sys.stderr)
            rounds.append(json.loads(done.read_text()))
        else:
            rounds.append(run_round(k, work, data, generator, discriminator_base, scorer, options))
        if k and options.until_auc is not None and rounds[-1]["fresh_discriminator_auc"] <= options.until_auc:
            print(f"round {k}: the fresh judge's AUC {rounds[-1]['fresh_discriminator_auc']:.3f} <= {options.until_auc}: stopping", file=sys.stderr)
            break
    last = rounds[-1]["round"]

    summary = {"settings": settings, "rounds": rounds, "targets": targets(rounds), "stopped_at": last,
               "discriminator": str(work / f"round-{last}" / "discriminator")}
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(work / f"round-{last}" / "generator", staging)
    _write_json(staging / ROUNDS, summary)
    (staging / PLOT).write_text(plot_rounds(rounds))
    record = training_record(staging) or {}
    _write_json(staging / TRAINING_RECORD, {**record, "base": generator, "adversarial": {k: v for k, v in summary.items() if k != "settings"}})
    move_into_place(staging, out)
    return {"path": str(out), "rounds_file": str(out / ROUNDS), "plot": str(out / PLOT), **summary}


# --- plot ----------------------------------------------------------------------------------

PANELS = (  # title, (figure key, legend) per line
    ("judge ROC-AUC (held-out)", (("fresh_discriminator_auc", "fresh"), ("round0_discriminator_auc", "round 0's"))),
    ("fresh judge's parts: ROC-AUC", (("fresh_pair_model_auc", "pair model"), ("length_baseline_auc", "length alone"))),
    ("reply perplexity (real held-out)", (("reply_perplexity", "perplexity"),)),
    ("distinct-2", (("distinct2_candidates", "candidates"), ("distinct2_real", "real replies"))),
    ("distinct-2, one reply per comment", (("distinct2_one_per_comment", "candidate"), ("distinct2_real_same_comments", "its real reply"))),
    ("share copying a training reply", (("copy_share", "candidates"),)),
    ("share kept (realism >= threshold)", (("share_kept", "candidates"),)),
    ("mean predicted upvotes", (("mean_predicted_upvotes", "candidates"), ("mean_predicted_upvotes_real", "real replies"))),
)
COLORS = ("#1f77b4", "#d62728")


def plot_rounds(rounds: list[dict[str, Any]]) -> str:
    """Every figure across rounds as small multiples, in SVG (matplotlib is not a dependency: SVG is text)."""
    width, height, columns = 330, 210, 3
    left, right, top, bottom = 64, 12, 28, 44
    rows = math.ceil(len(PANELS) / columns)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width * columns}" height="{height * rows}" '
             'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>']
    xs = [r["round"] for r in rounds]
    for index, (title, lines) in enumerate(PANELS):
        x0, y0 = (index % columns) * width, (index // columns) * height
        inner_w, inner_h = width - left - right, height - top - bottom
        parts.append(f'<text x="{x0 + width / 2}" y="{y0 + 16}" text-anchor="middle" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{x0 + left}" y="{y0 + top}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#999"/>')
        values = [r.get(key) for key, _ in lines for r in rounds if r.get(key) is not None and math.isfinite(r.get(key))]
        if not values:
            parts.append(f'<text x="{x0 + width / 2}" y="{y0 + top + inner_h / 2}" text-anchor="middle" fill="#777">not measured</text>')
            continue
        low, high = min(values), max(values)
        pad = (high - low) * 0.1 or abs(high) * 0.1 or 0.1
        low, high = low - pad, high + pad
        span_x = max(1, xs[-1] - xs[0])

        def point(x: float, y: float) -> tuple[float, float]:
            return x0 + left + (x - xs[0]) / span_x * inner_w, y0 + top + (high - y) / (high - low) * inner_h

        digits = next((d for d in range(3, 9) if f"{low + pad:.{d}g}" != f"{high - pad:.{d}g}"), 3)  # enough to tell them apart
        for value in (low + pad, high - pad):
            parts.append(f'<text x="{x0 + left - 4}" y="{point(xs[0], value)[1] + 4:.1f}" text-anchor="end">{value:.{digits}g}</text>')
        for x in xs:
            parts.append(f'<text x="{point(x, low)[0]:.1f}" y="{y0 + top + inner_h + 14}" text-anchor="middle">{x}</text>')
        parts.append(f'<text x="{x0 + left + inner_w / 2}" y="{y0 + top + inner_h + 26}" text-anchor="middle">round</text>')
        legend_x = x0 + left
        for (key, legend), color, dash in zip(lines, COLORS, ("", ' stroke-dasharray="5,3"')):  # dashed: a second line may lie on the first
            points = [point(r["round"], r[key]) for r in rounds if r.get(key) is not None and math.isfinite(r[key])]
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
            parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points]
            parts.append(f'<text x="{legend_x}" y="{y0 + height - 4}" fill="{color}">— {legend}</text>')
            legend_x += 12 + 7 * len(legend)
    parts.append("</svg>")
    return "\n".join(parts)
