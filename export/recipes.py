"""From Pushshift dumps to trained models and a bundle: what `replyrank train ...` runs.

Pairs come from `dumps.load_pairs`, split by thread (`dumps.split_by_thread`), read and split once
per command: train for fitting, valid for the generator's held-out perplexity and export
validation, test for the metrics. The discriminator's fakes are sampled here, by replyrank's own
runtime with the deployment's sampling options (`assemble.DEPLOYMENT`, recorded in the bundle), so
it learns to judge exactly the candidates the bundle will write.
"""

from __future__ import annotations

import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from replyrank.bundle import DISCRIMINATOR, GENERATOR, MANIFEST, PARTS, REALISM_THRESHOLD, UPVOTES, Bundle
from replyrank.generate import GenerationOptions, Generator

from replyrank.dumps import Filters, Pair, SiblingPair, load_pairs, sibling_pairs, split_by_thread
from .assemble import DEPLOYMENT, ExportOptions, export_bundle, export_generator
from .train import TrainOptions, train_discriminator, train_generator, train_upvotes, upvote_target

FAKES_PER_COMMENT = 2  # generated replies per real comment in the discriminator's training data

Split = dict[str, list[Pair]]


def load_split(files: Sequence[str], filters: Filters | None = None, seed: int = 0) -> dict[str, list[Pair]]:
    return split_by_thread(load_pairs(files, filters or Filters()), seed=seed)


def _sample(pairs: list[Pair], count: int | None, seed: int) -> list[Pair]:
    if count is None or len(pairs) <= count:
        return pairs
    return random.Random(seed).sample(pairs, count)


def runtime_generator(generator: str, work: Path, options: GenerationOptions = DEPLOYMENT, threads: int | None = None) -> Generator:
    """replyrank's own ONNX runtime generator for `generator`.

    `generator` is a bundle folder (its generator is used as is) or a causal LM (hub id, folder,
    GGUF), which is first exported into `work` the way a bundle exports it, so its replies are the deployment's own.
    """
    if (Path(generator) / MANIFEST).is_file():
        bundle = Bundle.read(generator)
        return Generator(bundle.folder(bundle.generator), bundle.generator, threads)
    spec, _ = export_generator(generator, work / "fake-generator", work, sampling=options)
    return Generator(work / "fake-generator", spec, threads)


def sample_replies(
    generator: str | Generator, comments: Sequence[str], options: GenerationOptions, work: Path, threads: int | None = None, seed: int = 0
) -> list[tuple[str, str]]:
    """(comment, generated reply) pairs written by replyrank's own ONNX runtime with `options`.

    `generator` is a runtime Generator, or what `runtime_generator` takes (exported into `work` first).
    Comment i of a run with `seed` is sampled with its own seed, so a run is reproducible.
    """
    from tqdm.auto import tqdm

    model = generator if isinstance(generator, Generator) else runtime_generator(generator, work, options, threads)
    fakes = []
    for i, comment in enumerate(tqdm(comments, desc="sample fakes", file=sys.stderr)):
        sample = model.sample(comment, replace(options, seed=(seed << 32) + i))
        fakes += [(comment, g.text) for g in sample.generations if g.text.strip()]
    return fakes


def real_and_fake(
    generator: str | Generator, train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]], train_comments: int, test_comments: int,
    work: Path, sampling: GenerationOptions = DEPLOYMENT, threads: int | None = None, seed: int = 0,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """The discriminator's (real train, fake train, real test, fake test), balanced.

    The generator writes FAKES_PER_COMMENT replies (with `sampling`) to the first `train_comments`
    comments of `train` and the first `test_comments` of `test`; the real replies are those of the
    next comments, as many as there are fakes, so no comment has both a real and a fake reply.
    """
    fake_train_comments = [comment for comment, _ in train[:train_comments]]
    fake_test_comments = [comment for comment, _ in test[:test_comments]]
    options = replace(sampling, candidates=FAKES_PER_COMMENT)
    fakes = sample_replies(generator, fake_train_comments + fake_test_comments, options, work, threads, seed)
    held_out = set(fake_test_comments)
    fake_train = [pair for pair in fakes if pair[0] not in held_out]
    fake_test = [pair for pair in fakes if pair[0] in held_out]
    real_train = list(train[train_comments:][: len(fake_train)])
    real_test = list(test[test_comments:][: len(fake_test)])
    return real_train, fake_train, real_test, fake_test


def generator(
    split: Split, base: str, out: str, options: TrainOptions, max_pairs: int | None = None, template: str | None = None
) -> dict[str, Any]:
    train = [(p.parent, p.reply) for p in _sample(split["train"], max_pairs, options.seed)]
    valid = [(p.parent, p.reply) for p in _sample(split["valid"], 512, options.seed)]
    return train_generator(train, valid, base, out, options, template)


def discriminator(
    split: Split, generator_source: str, base: str, out: str, options: TrainOptions, fakes: int = 1000, threads: int | None = None
) -> dict[str, Any]:
    """Real replies vs replies the generator writes (through the ONNX runtime) to other parents of the same split."""
    rng = random.Random(options.seed)
    train, test = [(p.parent, p.reply) for p in split["train"]], [(p.parent, p.reply) for p in split["test"]]
    rng.shuffle(train)
    rng.shuffle(test)
    train_comments, test_comments = fakes // FAKES_PER_COMMENT, max(8, fakes // (4 * FAKES_PER_COMMENT))
    with tempfile.TemporaryDirectory(prefix="replyrank-fakes-") as tmp:
        sets = real_and_fake(generator_source, train, test, train_comments, test_comments, Path(tmp), DEPLOYMENT, threads, options.seed)
    return train_discriminator(*sets, base, out, options)


def upvotes(split: Split, base: str, out: str, options: TrainOptions, pairwise: bool = False, max_pairs: int | None = None) -> dict[str, Any]:
    """Regression on sign(s)·log1p(|s|), or DialogRPT's pairwise loss on sibling pairs; DialogRPT's protocol for testing."""
    train = _sample(split["train"], max_pairs, options.seed)
    test = _sample(split["test"], 2000, options.seed)
    rows = [(p.parent, p.reply, upvote_target(p.score)) for p in train]
    test_rows = [(p.parent, p.reply, float(p.score)) for p in test]

    def as_text(pairs: list[SiblingPair]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        return [((p.better.parent, p.better.reply), (p.worse.parent, p.worse.reply)) for p in pairs]

    siblings_train = as_text(_sample(sibling_pairs(split["train"]), max_pairs, options.seed)) if pairwise else []
    sibling_tests = {
        "all": as_text(_sample(sibling_pairs(split["test"]), 2000, options.seed)),
        "gap5": as_text(_sample(sibling_pairs(split["test"], min_gap=5), 2000, options.seed)),
    }
    return train_upvotes(rows, test_rows, base, out, options, siblings_train, sibling_tests)


def everything(
    files: Sequence[str], out: str, generator_base: str, scorer_base: str, work: str, options: TrainOptions,
    generator_options: TrainOptions, max_pairs: int | None = None, fakes: int = 1000,
) -> dict[str, Any]:
    """The three models, then the bundle; the metrics of each are written into the manifest."""
    folder = Path(work)
    split = load_split(files, seed=options.seed)
    trained = {name: str(folder / name) for name in PARTS}
    metrics = {GENERATOR: generator(split, generator_base, trained[GENERATOR], generator_options, max_pairs)}
    metrics[DISCRIMINATOR] = discriminator(split, trained[GENERATOR], scorer_base, trained[DISCRIMINATOR], options, fakes)
    metrics[UPVOTES] = upvotes(split, scorer_base, trained[UPVOTES], options, pairwise=False, max_pairs=max_pairs)
    pairs = [(p.parent, p.reply) for p in _sample(split["valid"], 32, options.seed)]
    bundle = export_bundle(
        trained[GENERATOR], trained[DISCRIMINATOR], trained[UPVOTES], out, pairs,
        ExportOptions(training={"data": [str(f) for f in files], **metrics}),
    )
    metrics[GENERATOR][f"discriminator_pass_share_at_{REALISM_THRESHOLD}"] = pass_share(out, [c for c, _ in pairs[:16]])
    return {"metrics": metrics, "realism_threshold": bundle.realism_threshold, "validation": dict(bundle.validation)}


def pass_share(bundle: str, comments: Sequence[str], threshold: float = REALISM_THRESHOLD) -> float:
    """Share of the bundle's candidates (deployment settings) that its discriminator calls human (p >= threshold)."""
    import replyrank

    bot = replyrank.load(bundle, realism_threshold=threshold)
    candidates = [c for i, comment in enumerate(comments) for c in bot.reply(comment, seed=i).candidates if c.realism is not None]
    return sum(c.realism >= threshold for c in candidates) / max(1, len(candidates))
