"""From Pushshift dumps to trained models and a bundle: what `replyrank train ...` runs.

Pairs come from `dumps.load_pairs`, split by thread (`dumps.split_by_thread`), read and split once
per command: train for fitting, valid for the generator's held-out perplexity, the upvote head's
calibration and export validation, test for the metrics. The realism head's and the
discriminator's fakes are sampled here, by replyrank's own runtime with the deployment's sampling
options (`assemble.DEPLOYMENT`, recorded in the bundle), so they learn to judge exactly the
candidates the bundle will write.
"""

from __future__ import annotations

import random
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from replyrank.bundle import DISCRIMINATOR, GENERATOR, MANIFEST, REALISM_THRESHOLD, UPVOTES, Bundle
from replyrank.dumps import Filters, Pair, load_pairs, split_by_thread
from replyrank.evaluate import EvalOptions
from replyrank.generate import GenerationOptions, Generator, whole_sentences

from . import rankers
from .assemble import DEPLOYMENT, ExportOptions, export_bundle, export_generator
from .build_log import terminal
from .quantize import BLOCK_SIZE
from .train import TrainOptions, train_generator

FAKES_PER_COMMENT = 2  # generated replies per real comment in the discriminator's training data

Split = dict[str, list[Pair]]


def load_split(files: Sequence[str], filters: Filters | None = None, seed: int = 0) -> dict[str, list[Pair]]:
    return split_by_thread(load_pairs(files, filters or Filters()), seed=seed)


def _sample(pairs: list[Pair], count: int | None, seed: int) -> list[Pair]:
    if count is None or len(pairs) <= count:
        return pairs
    return random.Random(seed).sample(pairs, count)


def runtime_generator(
    generator: str, work: Path, options: GenerationOptions = DEPLOYMENT, threads: int | None = None, block_size: int = BLOCK_SIZE,
    calibration_pairs: list[tuple[str, str]] | None = None,
) -> Generator:
    """replyrank's own ONNX runtime generator for `generator`.

    `generator` is a bundle folder (its generator is used as is) or a causal LM (hub id, folder,
    GGUF), which is first exported into `work` the way a bundle exports it (int8 at MatMulNBits
    `block_size`, smoothed dynamic int8 where `calibration_pairs` are given: give the bundle's), so
    its replies are the deployment's own.
    """
    if (Path(generator) / MANIFEST).is_file():
        bundle = Bundle.read(generator)
        return Generator(bundle.folder(bundle.generator), bundle.generator, threads)
    spec, _, _ = export_generator(generator, work / "fake-generator", work, sampling=options, block_size=block_size, calibration_pairs=calibration_pairs)
    return Generator(work / "fake-generator", spec, threads)


class TorchSampler:
    """A causal LM sampled with transformers' `generate` on a GPU, with the runtime's prompt and options.

    Where the generator trains on a GPU, its candidates are sampled there too. Same prompt as
    `replyrank.generate.Generator` (BOS where the export adds it, the template's prefix, the comment's
    first `max_comment_tokens` tokens, its suffix) and the same temperature, top-k, top-p, repetition
    penalty, token limits and EOS; `batch_rows` candidates of many comments decode as one batch.
    Its random draws are torch's, not the runtime's: a seed reproduces a run on the same device only.
    """

    def __init__(self, source: str, template: str, device: str = "cuda", batch_rows: int = 512):
        from .convert import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(source)
        self.model.to(device).eval()
        self.device, self.batch_rows = device, batch_rows
        prefix, suffix = template.split("{comment}")
        self.prefix_ids, self.suffix_ids = self._encode(prefix), self._encode(suffix)
        bos = self.tokenizer.bos_token_id  # the export's rule (`convert.generator_spec`)
        if bos is not None and self._encode("a", True)[:1] == [bos] and not template.startswith(self.tokenizer.bos_token):
            self.prefix_ids = [bos] + self.prefix_ids
        self.eos_ids = [self.tokenizer.eos_token_id]
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    def _encode(self, text: str, special: bool = False, as_text: bool = False) -> list[int]:
        """Token ids of `text`; `as_text` reads markup such as <|im_end|> as plain text (a comment's, as the runtime does)."""
        return self.tokenizer(text, add_special_tokens=special, split_special_tokens=as_text).input_ids if text else []

    def replies(self, comments: Sequence[str], options: GenerationOptions, seed: int = 0) -> list[tuple[str, str]]:
        """(comment, reply) pairs, `options.candidates` per comment, empty replies left out (as `sample_replies`)."""
        import torch
        from transformers import GenerationConfig

        from replyrank.generate import MAX_COMMENT_CHARS

        config = GenerationConfig(
            do_sample=options.temperature > 0, temperature=options.temperature or None, top_k=options.top_k, top_p=options.top_p,
            repetition_penalty=options.repetition_penalty, max_new_tokens=options.max_new_tokens, min_new_tokens=options.min_new_tokens,
            eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
        )
        prompts = [self.prefix_ids + self._encode(c[:MAX_COMMENT_CHARS], as_text=True)[: options.max_comment_tokens] + self.suffix_ids for c in comments]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
        per_batch = max(1, self.batch_rows // options.candidates)
        texts: list[list[str]] = [[] for _ in comments]
        for start in range(0, len(order), per_batch):
            chunk = order[start : start + per_batch]
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), self.pad_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every prompt ends where generation starts
                input_ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]) :] = 1
            torch.manual_seed((seed << 20) + start)
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids.repeat_interleave(options.candidates, 0).to(self.device),
                    attention_mask=mask.repeat_interleave(options.candidates, 0).to(self.device), generation_config=config,
                )
            for row, tokens in enumerate(out[:, width:].tolist()):
                cut = next((t for t, token in enumerate(tokens) if token in self.eos_ids), len(tokens))  # EOS, then padding
                text = self.tokenizer.decode(tokens[:cut], skip_special_tokens=True)
                stopped = any(stop in text for stop in options.stop)
                for stop in options.stop:
                    text = text.split(stop, 1)[0]
                # the runtime's rule for a reply the token limit cut off (`Generation`)
                text = whole_sentences(text.strip()) if cut == len(tokens) and not stopped else text.strip()
                texts[chunk[row // options.candidates]].append(text)
        return [(comment, text) for comment, replies in zip(comments, texts) for text in replies if text]


def sample_replies(
    generator: str | Generator | TorchSampler, comments: Sequence[str], options: GenerationOptions, work: Path, threads: int | None = None, seed: int = 0
) -> list[tuple[str, str]]:
    """(comment, generated reply) pairs written by replyrank's own ONNX runtime with `options`.

    `generator` is a runtime Generator, a `TorchSampler`, or what `runtime_generator` takes (exported into `work` first).
    Comment i of a run with `seed` is sampled with its own seed, so a run is reproducible.
    """
    from tqdm.auto import tqdm

    if isinstance(generator, TorchSampler):
        return generator.replies(comments, options, seed)
    model = generator if isinstance(generator, Generator) else runtime_generator(generator, work, options, threads)
    fakes = []
    for i, comment in enumerate(tqdm(comments, desc="sample fakes", file=terminal())):
        sample = model.sample(comment, replace(options, seed=(seed << 32) + i))
        fakes += [(comment, g.text) for g in sample.generations if g.text.strip()]
    return fakes


def real_and_fake(
    generator: str | Generator | TorchSampler, train: Sequence[tuple[str, str]], test: Sequence[tuple[str, str]], train_comments: int, test_comments: int,
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
    split: Split, generator_source: str, base: str, out: str, options: rankers.RankerOptions = rankers.DISCRIMINATOR_RECIPE,
    fakes: int = 1000, threads: int | None = None,
) -> dict[str, Any]:
    """A pair model trained on real replies vs replies the generator writes (through the ONNX runtime) to other
    parents of the same split (`rankers.train_discriminator`)."""
    rng = random.Random(options.seed)
    train, test = [(p.parent, p.reply) for p in split["train"]], [(p.parent, p.reply) for p in split["test"]]
    rng.shuffle(train)
    rng.shuffle(test)
    train_comments, test_comments = fakes // FAKES_PER_COMMENT, max(8, fakes // (4 * FAKES_PER_COMMENT))
    with tempfile.TemporaryDirectory(prefix="replyrank-fakes-") as tmp:
        sets = real_and_fake(generator_source, train, test, train_comments, test_comments, Path(tmp), DEPLOYMENT, threads, options.seed)
    return rankers.train_discriminator(*sets, base, out, options)


@dataclass
class PairSelection:
    """Which sibling pairs train the upvote head (DialogRPT: neighbours in time, within an hour)."""

    within_seconds: int | None = 3600
    adjacent: bool = True
    min_gap: int = 3
    max_per_parent: int | None = None


def load_reddit(files: Sequence[str], seed: int = 0) -> dict[str, list]:
    """Pairs from Pushshift dumps with DialogRPT's text normalisation, split by thread (train / valid / test)."""
    from replyrank.filters import normalize_text

    pairs = []
    # long posts are kept (their first tokens are what the encoder sees), not dropped
    for pair in load_pairs(files, Filters(max_chars=100_000)):
        parent, reply = normalize_text(pair.parent)[:2000], normalize_text(pair.reply)[:2000]
        if parent and reply:
            pairs.append(replace(pair, parent=parent, reply=reply))
    return split_by_thread(pairs, valid=0.05, test=0.1, seed=seed)


def train_upvote_model(
    files: Sequence[str], base: str, out: str | Path, options: rankers.RankerOptions, selection: PairSelection = PairSelection(),
    heldout_files: Sequence[str] = (), max_pairs: int | None = None, eval_options: EvalOptions | None = None,
) -> dict[str, Any]:
    """Train the upvote head on `files`, calibrate it on validation threads, evaluate it; writes `out`.

    Evaluation (replyrank.evaluate's protocol) runs on the test threads of `files` and, when
    given, on `heldout_files` (dumps of subreddits not trained on): the numbers that count.
    """
    from replyrank.dumps import sibling_pairs
    from replyrank.evaluate import draw_comparisons, evaluate

    eval_options = eval_options or EvalOptions(seed=options.seed)
    split = load_reddit(files, options.seed)
    pairs = sibling_pairs(split["train"], selection.within_seconds, selection.min_gap, adjacent=selection.adjacent,
                          max_per_parent=selection.max_per_parent, seed=options.seed)
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = random.Random(options.seed).sample(pairs, max_pairs)
    singles = [(p.parent, p.reply, float(p.score)) for p in split["train"]] if options.regression_weight > 0 else []
    print(f"upvote head: {len(pairs)} training pairs, {len(singles)} scored replies", file=sys.stderr)
    model, tokenizer, fit = rankers.train_upvotes(pairs, base, options, singles)

    def upvotes(texts: list[tuple[str, str]]) -> np.ndarray:
        return rankers.predict(model, tokenizer, texts, options.max_length)[1]

    valid = sibling_pairs(split["valid"], 3600, 1)
    scale = rankers.fit_upvote_scale(upvotes([(p.better.parent, p.better.reply) for p in valid]),
                                     upvotes([(p.worse.parent, p.worse.reply) for p in valid]))
    report = {"test_threads": evaluate(draw_comparisons(split["test"], eval_options), upvotes)}
    if heldout_files:
        heldout = load_reddit(heldout_files, options.seed)
        rows = heldout["train"] + heldout["valid"] + heldout["test"]
        report["heldout_subreddits"] = evaluate(draw_comparisons(rows, eval_options), upvotes)
    info = {
        "heads": {"upvotes": {"trained": True, "objective": "bradley-terry" + ("+regression" if singles else ""),
                              "bt_scale": scale, "calibrated_on_pairs": len(valid), **fit}},
        "base": base, "options": asdict(options), "selection": asdict(selection), "training_pairs": len(pairs),
        "data": [Path(f).name for f in files], "heldout_data": [Path(f).name for f in heldout_files],
        "text_normalization": rankers.TEXT_NORMALIZATION, "evaluation": report,
    }
    rankers.save(model, tokenizer, out, info)
    return info


def sibling_triples(files: Sequence[str], selection: PairSelection, seed: int = 0, max_pairs: int | None = None) -> list[tuple[str, str, str]]:
    """(comment, better reply, worse reply) of the training threads' sibling pairs, as `train_upvote_model` selects them:
    what `train upvotes --data` adds beside a preference file."""
    from replyrank.dumps import sibling_pairs

    pairs = sibling_pairs(load_reddit(files, seed)["train"], selection.within_seconds, selection.min_gap, adjacent=selection.adjacent,
                          max_per_parent=selection.max_per_parent, seed=seed)
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = random.Random(seed).sample(pairs, max_pairs)
    return [(p.better.parent, p.better.reply, p.worse.reply) for p in pairs]


def realism_head(
    split: Split, scorer: str | Path, generator_source: str, out: str | Path, options: rankers.RankerOptions = rankers.REALISM_RECIPE,
    fakes: int = 720, data: Sequence[str] = (),
) -> dict[str, Any]:
    """Fit a two-head scorer's realism head to real replies vs the replies `generator_source` writes (through the runtime,
    with the deployment's sampling) to other comments of the split, the upvote head held to its scores; writes `out`."""
    train, test = [(p.parent, p.reply) for p in split["train"]], [(p.parent, p.reply) for p in split["test"]]
    model, tokenizer, info = rankers.load(scorer)
    with tempfile.TemporaryDirectory(prefix="replyrank-fakes-") as tmp:
        sets = real_and_fake(generator_source, train, test, fakes // FAKES_PER_COMMENT, max(8, fakes // (4 * FAKES_PER_COMMENT)), Path(tmp),
                             seed=options.seed)
    realism = rankers.train_realism(model, tokenizer, *sets, options)
    info["heads"]["realism"] = {"trained": True, "data": [Path(f).name for f in data], **realism}
    rankers.save(model, tokenizer, out, info)
    return realism


def everything(
    files: Sequence[str], out: str, generator_base: str, scorer_base: str, work: str, options: TrainOptions,
    max_pairs: int | None = None, fakes: int = 1000,
) -> dict[str, Any]:
    """The generator, one two-head scorer for it, then the bundle; the metrics of each are written into the manifest.

    `options` are the generator's fine-tune's (their seed and device apply to all). The scorer is
    `train upvotes`' recipe (`rankers.UPVOTE_RECIPE`: Bradley-Terry on time-adjacent siblings, the
    one that ranks), then `train realism`'s on this generator's fakes. `max_pairs` caps both the
    generator's pairs and the upvote head's sibling pairs.
    """
    folder = Path(work)
    split = load_split(files, seed=options.seed)
    trained = {name: str(folder / name) for name in (GENERATOR, UPVOTES, "scorer")}
    metrics = {GENERATOR: generator(split, generator_base, trained[GENERATOR], options, max_pairs)}
    shared = {"seed": options.seed, "device": options.device}
    info = train_upvote_model(files, scorer_base, trained[UPVOTES], replace(rankers.UPVOTE_RECIPE, **shared), max_pairs=max_pairs)
    metrics[UPVOTES] = {k: v for k, v in info.items() if k != "heads"} | {"head": info["heads"]["upvotes"]}
    metrics[DISCRIMINATOR] = realism_head(split, trained[UPVOTES], trained[GENERATOR], trained["scorer"], replace(rankers.REALISM_RECIPE, **shared),
                                          fakes, files)
    pairs = [(p.parent, p.reply) for p in _sample(split["valid"], 32, options.seed)]
    calibration = [(p.parent, p.reply) for p in _sample(split["train"], 64, options.seed)]
    bundle = export_bundle(
        trained[GENERATOR], trained["scorer"], trained["scorer"], out, pairs,
        ExportOptions(training={"data": [str(f) for f in files], **metrics}), calibration,
    )
    metrics[GENERATOR][f"discriminator_pass_share_at_{REALISM_THRESHOLD}"] = pass_share(out, [c for c, _ in pairs[:16]])
    return {"metrics": metrics, "realism_threshold": bundle.realism_threshold, "validation": dict(bundle.validation)}


def pass_share(bundle: str, comments: Sequence[str], threshold: float = REALISM_THRESHOLD) -> float:
    """Share of the bundle's candidates (deployment settings) that its discriminator calls human (p >= threshold)."""
    import replyrank

    bot = replyrank.load(bundle, realism_threshold=threshold)
    candidates = [c for i, comment in enumerate(comments) for c in bot.reply(comment, seed=i).candidates if c.realism is not None]
    return sum(c.realism >= threshold for c in candidates) / max(1, len(candidates))
