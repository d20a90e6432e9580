"""From Pushshift dumps to trained models and a bundle: what `replyrank train ...` runs.

Pairs come from `dumps.load_pairs`, split by thread (`dumps.split_by_thread`): train for fitting,
valid for the generator's held-out perplexity and export validation, test for the metrics.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any, Sequence

from replyrank.generate import GenerationOptions

from replyrank.dumps import Filters, Pair, load_pairs, sibling_pairs, split_by_thread
from .train import TrainOptions, sample_replies, train_discriminator, train_generator, train_upvotes, upvote_target

DEPLOYMENT = GenerationOptions(candidates=2, max_new_tokens=40, temperature=0.7, top_k=40)


def load_split(files: Sequence[str], filters: Filters | None = None, seed: int = 0) -> dict[str, list[Pair]]:
    return split_by_thread(load_pairs(files, filters or Filters()), seed=seed)


def _sample(pairs: list[Pair], count: int | None, seed: int) -> list[Pair]:
    if count is None or len(pairs) <= count:
        return pairs
    return random.Random(seed).sample(pairs, count)


def generator(
    files: Sequence[str], base: str, out: str, options: TrainOptions, max_pairs: int | None = None, template: str | None = None
) -> dict[str, Any]:
    split = load_split(files, seed=options.seed)
    train = [(p.parent, p.reply) for p in _sample(split["train"], max_pairs, options.seed)]
    valid = [(p.parent, p.reply) for p in _sample(split["valid"], 512, options.seed)]
    return train_generator(train, valid, base, out, options, template)


def discriminator(
    files: Sequence[str], generator_source: str, base: str, out: str, options: TrainOptions, fakes: int = 1000, threads: int | None = None
) -> dict[str, Any]:
    """Real replies vs replies the generator writes (through the ONNX runtime) to other parents of the same split."""
    split = load_split(files, seed=options.seed)
    rng = random.Random(options.seed)
    train, test = split["train"][:], split["test"][:]
    rng.shuffle(train)
    rng.shuffle(test)
    per_comment = DEPLOYMENT.candidates
    fake_train_parents = [p.parent for p in train[: fakes // per_comment]]
    fake_test_parents = [p.parent for p in test[: max(8, fakes // (4 * per_comment))]]
    with tempfile.TemporaryDirectory(prefix="replyrank-fakes-") as tmp:
        generated = sample_replies(generator_source, fake_train_parents + fake_test_parents, DEPLOYMENT, Path(tmp), threads, options.seed)
    test_parents = set(fake_test_parents)
    fake_train = [g for g in generated if g[0] not in test_parents]
    fake_test = [g for g in generated if g[0] in test_parents]
    real_train = [(p.parent, p.reply) for p in train[fakes // per_comment :][: len(fake_train)]]
    real_test = [(p.parent, p.reply) for p in test[len(fake_test_parents) :][: len(fake_test)]]
    return train_discriminator(real_train, fake_train, real_test, fake_test, base, out, options)


def upvotes(files: Sequence[str], base: str, out: str, options: TrainOptions, pairwise: bool = False, max_pairs: int | None = None) -> dict[str, Any]:
    """Regression on sign(s)·log1p(|s|), or DialogRPT's pairwise loss on sibling pairs; DialogRPT's protocol for testing."""
    split = load_split(files, seed=options.seed)
    train = _sample(split["train"], max_pairs, options.seed)
    test = _sample(split["test"], 2000, options.seed)
    rows = [(p.parent, p.reply, upvote_target(p.score)) for p in train]
    test_rows = [(p.parent, p.reply, float(p.score)) for p in test]

    def as_text(pairs: list[tuple[Pair, Pair]]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
        return [((hi.parent, hi.reply), (lo.parent, lo.reply)) for hi, lo in pairs]

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
    from .assemble import ExportOptions, export_bundle

    folder = Path(work)
    metrics = {"generator": generator(files, generator_base, str(folder / "generator"), generator_options, max_pairs)}
    metrics["discriminator"] = discriminator(files, str(folder / "generator"), scorer_base, str(folder / "discriminator"), options, fakes)
    metrics["upvotes"] = upvotes(files, scorer_base, str(folder / "upvotes"), options, pairwise=False, max_pairs=max_pairs)
    valid = load_split(files, seed=options.seed)["valid"]
    pairs = [(p.parent, p.reply) for p in _sample(valid, 32, options.seed)]
    manifest = export_bundle(
        str(folder / "generator"), str(folder / "discriminator"), str(folder / "upvotes"), out, pairs,
        ExportOptions(metadata={"training": {"data": [str(f) for f in files], **metrics}}),
    )
    metrics["generator"]["discriminator_pass_share_at_0.5"] = pass_share(out, [c for c, _ in pairs[:16]])
    return {"metrics": metrics, "realism_threshold": manifest["realism_threshold"], "validation": manifest["validation"]}


def pass_share(bundle: str, comments: Sequence[str], threshold: float = 0.5) -> float:
    """Share of the bundle's candidates (deployment settings) that its discriminator calls human (p >= threshold)."""
    import replyrank

    bot = replyrank.load(bundle, realism_threshold=threshold)
    candidates = [c for i, comment in enumerate(comments) for c in bot.reply(comment, seed=i).candidates if c.realism is not None]
    return sum(c.realism >= threshold for c in candidates) / max(1, len(candidates))
