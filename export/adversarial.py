"""Adversarial rounds: fine-tune the generator toward the replies its discriminator takes for human.

The GPT-2 + BERT reply bot's loop, done as rejection-sampling fine-tuning (best-of-N distillation,
as in Llama 2's rejection sampling rounds and RAFT). Round 0 measures the generator as given.
Every later round first fine-tunes the previous round's generator: on the candidates the previous
judge ranked best (per training comment, by realism, or by realism x upvote chance given an upvote
model), mixed with real pairs, at a low learning rate for one pass, the real pairs and small steps
anchoring it in place of a KL term; or, with `method="dpo"`, with DPO on (comment, its real reply,
the candidate the previous judge found least human), the previous generator as the reference:
SPIN's self-play pairs (Chen et al., 2024), the discriminator picking the negative. Then every round:

1. samples its generator's replies with the deployment's settings, through replyrank's own ONNX
   runtime (`recipes.real_and_fake`), or on a GPU through transformers (`recipes.TorchSampler`);
2. trains a *fresh* judge (`export.adversarial_judge`): a pair model from the same base every round, on real
   replies vs these fakes, stacked with the reply's length, so its held-out AUC falls only if the
   replies got harder to tell;
3. measures on held-out threads: that AUC, round 0's judge's AUC on these fakes, reply perplexity
   on real replies, distinct-2, copies of training replies (`adversarial_metrics`), mean predicted
   upvotes, and the share of candidates at realism >= threshold;
4. ranks N candidates per training comment with that judge for the next round's fine-tune.

With a LoRA rank, one adapter over the given generator is continued from round to round. Held-out
threads are the `test` split of the training files, or every pair of the `held_out` files. Each
round is built in WORK/.round-K.partial and moved into place as WORK/round-K when complete; a
re-run skips finished rounds and keeps an unfinished one's finished steps.
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

from replyrank.bot import upvote_chance
from replyrank.bundle import REALISM_THRESHOLD
from replyrank.environment import write_atomically
from replyrank.filters import COPY_WORDS
from replyrank.generate import Generator
from replyrank.metrics import roc_auc

from . import rankers
from .adversarial_judge import JUDGE, Judge, PairScorer, auc, hold_back, length_features, logistic
from .adversarial_metrics import CopyIndex, distinct_n, distinct_same_comments, targets
from .adversarial_plot import plot_rounds
from .assemble import DEPLOYMENT
from .convert import ExportError, default_template, load_causal_lm, split_gguf, stored_template
from .folders import move_into_place
from .rankers import train_discriminator
from .recipes import FAKES_PER_COMMENT, TorchSampler, load_split, real_and_fake, runtime_generator, sample_replies
from .train import TRAINING_RECORD, TrainOptions, pairs_perplexity, torch_device, train_generator, train_preference, training_record

ROUND = "round.json"  # a round's figures; its presence marks the round finished
SAMPLES = "samples.json"  # the round's sampled replies (kept so an interrupted round does not sample again)
DISTILL = "distill.json"  # what the round's judge picked for the next round's fine-tune
ROUNDS = "rounds.json"  # every round's figures, in the final model folder
PLOT = "rounds.svg"
SETTINGS = "settings.json"  # what the work folder was started with; a re-run must match it
PERPLEXITY_PAIRS = 512
METHODS = ("best-of-n", "dpo")


@dataclass
class AdversarialOptions:
    rounds: int = 3  # fine-tuning rounds, at most; the first round (0) measures the generator as given
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
    discriminator: rankers.RankerOptions = field(default_factory=lambda: replace(rankers.DISCRIMINATOR_RECIPE))
    # how a round fine-tunes on the previous round's judgements: "best-of-n" distills the candidates the judge
    # ranked best; "dpo" prefers each tune comment's real reply over the candidate it found least human (SPIN's
    # pairs, with the judge picking the negative), against the previous round as the reference
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


def distill(
    candidates: Sequence[tuple[str, str]], realism: np.ndarray, upvotes: np.ndarray | None, real: Sequence[tuple[str, str]],
    copy_index: CopyIndex, options: AdversarialOptions, upvote_scale: float | None = 1.0,
) -> dict[str, Any]:
    """The next fine-tune's data: per comment the `keep` best candidates, then `real_mix` real pairs per candidate.

    Best = most realistic; with an upvote model, the runtime's selection rule, realism x
    sigmoid(k·(u - median u)) (`replyrank.bot.upvote_chance`; u the upvote head's logit, k its measured
    scale, None where never measured), so a reply must read human *and* be predicted to land.
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
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False)))


def _settings(files: Sequence[str], generator: str, discriminator_base: str, upvotes: str | None, options: AdversarialOptions) -> dict[str, Any]:
    """What decides a run's results; the device and thread count may change between a run and its resume."""
    settings = asdict(options)
    settings.pop("threads")
    for trainer in ("generator", "discriminator"):
        settings[trainer].pop("device")
    return {"data": [str(f) for f in files], "generator": generator, "discriminator_base": discriminator_base, "upvotes": upvotes, **settings}


def _sampler(source: str, work: Path, options: AdversarialOptions) -> Generator | TorchSampler:
    """transformers' batched `generate` where the generator trains on a GPU, else replyrank's own runtime."""
    if torch_device(options.generator.device).startswith("cuda"):
        return TorchSampler(source, stored_template(source))
    return runtime_generator(source, work, DEPLOYMENT, options.threads)


def _replayed(k: int, options: AdversarialOptions) -> list[int]:
    """The rounds whose DPO pairs round k trains on: k-1 and the `dpo_replay` rounds before it."""
    return list(range(max(0, k - 1 - options.dpo_replay), k))


def _ranking_realism(k: int, work: Path, judge: Judge, pairs: Sequence[tuple[str, str]], options: AdversarialOptions) -> np.ndarray:
    """P(human) that ranks the next fine-tune's candidates: round k's judge, or with `judge_history` every judge of rounds 0..k.

    The judges' probabilities are averaged as logits (each judge is a calibrated logistic), so one
    judge's confident complaint is not washed out by another's shrug.
    """
    p = judge.scores(pairs)
    if not options.judge_history or k == 0:
        return p
    judged = np.clip([p] + [Judge.read(work / f"round-{j}", options.discriminator).scores(pairs) for j in range(k)], 1e-6, 1 - 1e-6)
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
    # 1. this round's generator: the given one, or the previous one fine-tuned on what its judge picked
    source, fine_tune = (generator, None) if k == 0 else _fine_tune(k, work, staging, generator, options)
    # 2. its replies, with the deployment's settings
    samples = _samples(k, staging, source, disc_rows, [] if last else tune_rows, data, options)
    # 3. a fresh judge: a pair model on real replies vs these fakes, stacked with reply length on rows it did not see
    judge, judge_record, pair_metrics = _fresh_judge(staging, samples, discriminator_base, options)
    # 4. the figures, on held-out threads
    figures = _figures(k, work, generator, source, data, samples, judge, judge_record, pair_metrics, upvotes, options)
    figures["fine_tune"] = fine_tune
    # 5. the next round's fine-tune data, ranked by this round's judge
    if not last:
        tune = [tuple(p) for p in samples["tune"]]
        realism = _ranking_realism(k, work, judge, tune, options)
        if options.method == "dpo":
            picked = preferences(tune, realism, tune_rows)
        else:
            scores = upvotes.scores(tune) if upvotes is not None else None  # DPO's pairs take no upvote score
            scale = upvotes.pairwise_scale if upvotes is not None else None
            picked = distill(tune, realism, scores, anchor_rows, data.copy_index, options, scale)
        picked["stats"]["ranked_by_rounds"] = list(range(k + 1)) if options.judge_history else [k]
        _write_json(staging / DISTILL, picked)
        figures["distilled"] = picked["stats"]
    figures["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(staging / ROUND, figures)
    move_into_place(staging, work / f"round-{k}")
    print(f"round {k}: {json.dumps({n: v for n, v in figures.items() if isinstance(v, (int, float))})}", file=sys.stderr)
    return figures


def _fine_tune(k: int, work: Path, staging: Path, generator: str, options: AdversarialOptions) -> tuple[str, dict[str, Any]]:
    """(round k's generator, how it was trained): the previous round's, fine-tuned on what the previous judge picked;
    kept from an interrupted run where it is there already."""
    base = str(work / f"round-{k - 1}" / "generator") if k > 1 else generator
    adapter = None
    if options.generator.lora_rank and k > 1:  # one adapter over the given generator, continued
        base, adapter = generator, work / f"round-{k - 1}" / "generator" / "adapter"
    out = staging / "generator"
    if not (out / "config.json").is_file():
        picked = json.loads((work / f"round-{k - 1}" / DISTILL).read_text())
        if options.method == "dpo":
            # the previous round's pairs, then those of the dpo_replay rounds before it: negatives an earlier judge picked
            # stay dispreferred, so a round cannot answer the last judge's complaint by bringing an older tell back
            triples = [tuple(t) for j in _replayed(k, options) for t in json.loads((work / f"round-{j}" / DISTILL).read_text())["preferences"]]
            train_preference(triples, base, out, options.generator, stored_template(base), adapter=adapter, beta=options.dpo_beta,
                             nll_weight=options.dpo_nll, length_normalized=options.dpo_length_normalized)
        else:
            pairs = [(comment, reply) for comment, reply in picked["pairs"] + picked["real"]]
            if not pairs:
                raise ExportError(f"round {k - 1} distilled no candidate to fine-tune on; sample more (--tune-comments, --candidates)")
            # held-out perplexity is measured for every round alike (`_figures`), so the trainer gets no valid pairs
            train_generator(pairs, [], base, out, options.generator, stored_template(base), adapter=adapter)
    metrics = (training_record(out) or {}).get("metrics", {})
    return str(out), {
        "method": options.method, "from": base, "adapter_from": str(adapter) if adapter else None, "train_pairs": metrics.get("train_pairs"),
        "final_loss": metrics.get("final_loss"), "final_reward_accuracy": metrics.get("final_reward_accuracy"),
        "length_normalized": metrics.get("length_normalized"),
        "pairs_of_rounds": _replayed(k, options) if options.method == "dpo" else [k - 1],
    }


def _samples(
    k: int, staging: Path, source: str, disc_rows: list[tuple[str, str]], tune_rows: list[tuple[str, str]], data: RoundData,
    options: AdversarialOptions,
) -> dict[str, Any]:
    """The discriminator's real and fake rows (train and held-out test) and N candidates per tune comment, sampled
    through replyrank's own runtime (or transformers on a GPU); kept in SAMPLES so an interrupted round does not sample again."""
    path = staging / SAMPLES
    if path.is_file():
        return json.loads(path.read_text())
    with tempfile.TemporaryDirectory(prefix="replyrank-round-") as tmp:
        model = _sampler(source, Path(tmp), options)
        sets = real_and_fake(model, disc_rows, data.test, options.fakes // FAKES_PER_COMMENT, options.held_out_comments,
                             Path(tmp), DEPLOYMENT, options.threads, seed=(options.seed << 8) + 2 * k)
        tune = sample_replies(model, [comment for comment, _ in tune_rows], replace(DEPLOYMENT, candidates=options.candidates), Path(tmp),
                              options.threads, seed=(options.seed << 8) + 2 * k + 1) if tune_rows else []
    samples = dict(zip(("real_train", "fake_train", "real_test", "fake_test"), sets), tune=tune,
                   sampler="transformers generate" if isinstance(model, TorchSampler) else "replyrank runtime (ONNX)")
    _write_json(path, samples)
    return samples


def _fresh_judge(
    staging: Path, samples: dict[str, Any], discriminator_base: str, options: AdversarialOptions,
) -> tuple[Judge, dict[str, Any], dict[str, Any]]:
    """(judge, its record, its pair model's held-out figures): a pair model trained on most of the real and fake rows,
    stacked with reply length on the rest; kept from an interrupted run where it is there already."""
    folder = staging / "discriminator"
    real_train, real_held = hold_back([tuple(p) for p in samples["real_train"]])
    fake_train, fake_held = hold_back([tuple(p) for p in samples["fake_train"]])
    if rankers.is_pair_model(folder):
        pair_metrics = rankers.read_info(folder)["heads"]["realism"]
    else:
        real_test, fake_test = [tuple(p) for p in samples["real_test"]], [tuple(p) for p in samples["fake_test"]]
        pair_metrics = train_discriminator(real_train, fake_train, real_test, fake_test, discriminator_base, folder, options.discriminator)
    pair = PairScorer(folder, options.discriminator)
    if (staging / JUDGE).is_file():
        record = json.loads((staging / JUDGE).read_text())
        return Judge(pair, record["weights"]), record, pair_metrics
    judge, record = Judge.fit(pair, real_held, fake_held)
    _write_json(staging / JUDGE, record)
    return judge, record, pair_metrics


def _figures(
    k: int, work: Path, generator: str, source: str, data: RoundData, samples: dict[str, Any], judge: Judge, judge_record: dict[str, Any],
    pair_metrics: dict[str, Any], upvotes: PairScorer | None, options: AdversarialOptions,
) -> dict[str, Any]:
    """The round's figures on held-out threads (the module docstring's step 3)."""
    real_test, fake_test = [tuple(p) for p in samples["real_test"]], [tuple(p) for p in samples["fake_test"]]
    test_realism = judge.scores(real_test + fake_test)  # held-out real replies, then this round's candidates
    realism = test_realism[len(real_test):]
    first = judge if k == 0 else Judge.read(work / "round-0", options.discriminator)
    test_labels = np.r_[np.ones(len(real_test)), np.zeros(len(fake_test))]
    model, tokenizer = load_causal_lm(source)
    model.to(torch_device(options.generator.device)).eval()
    perplexity_pairs = data.test[options.held_out_comments :][:PERPLEXITY_PAIRS]
    template = stored_template(source) or default_template(tokenizer)
    perplexity = pairs_perplexity(model, tokenizer, template, perplexity_pairs, options.generator)
    del model
    replies = [reply for _, reply in fake_test]
    return {
        "round": k,
        "generator": str(work / f"round-{k}" / "generator") if k > 0 else generator,  # where it lies once the round is in place
        "fresh_discriminator_auc": roc_auc(test_labels, test_realism),  # the judge: pair model and length
        "fresh_pair_model_auc": pair_metrics["roc_auc"],  # the pair model alone
        "fresh_pair_model_balanced_accuracy": pair_metrics["balanced_accuracy"],
        "length_baseline_auc": roc_auc(test_labels, logistic(length_features(real_test + fake_test), judge_record["length_weights"])),
        "round0_discriminator_auc": auc(first, real_test, fake_test),
        "reply_perplexity": perplexity,
        "distinct2_candidates": distinct_n(replies),
        "distinct2_real": distinct_n([reply for _, reply in real_test]),
        **distinct_same_comments(fake_test, data.test[: options.held_out_comments]),
        "copy_share": sum(map(data.copy_index.copies, replies)) / max(1, len(replies)),
        "mean_predicted_upvotes": float(upvotes.scores(fake_test).mean()) if upvotes is not None and fake_test else None,
        "mean_predicted_upvotes_real": float(upvotes.scores(real_test).mean()) if upvotes is not None and real_test else None,
        "share_kept": float((realism >= options.threshold).mean()) if realism.size else None,
        "threshold": options.threshold,
        "held_out": {"comments": len({c for c, _ in fake_test}), "candidates": len(fake_test), "real_replies": len(real_test),
                     "perplexity_pairs": len(perplexity_pairs)},
        "discriminator_train_examples": pair_metrics["train_examples"],
        "judge": judge_record,
        "sampler": samples.get("sampler"),
        "distilled": None,
    }


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
    scorer = PairScorer(Path(upvotes), options.discriminator, head="upvotes") if upvotes else None
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
