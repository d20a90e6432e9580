"""The bundle's scorer graphs: each score (realism, upvotes) from a two-head pair model (`export.rankers`) or a
transformers sequence classifier, exported to ONNX, quantized, described by its `ScorerSpec` and checked against PyTorch.

One pair-model folder given for both scores becomes one graph with two outputs (part `scorer`),
so one encoder pass per (comment, reply) pair yields both; any other source becomes a part of its
own, named for its score.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from replyrank.bundle import DISCRIMINATOR, UPVOTES, Score, ScorerSpec

from . import rankers
from .convert import SCORER_SPEC, Checkpoint, check_scorer, copy_part_files, export_onnx
from .quantize import optimize_offline, quantize_scorer
from .validate import pair_model_vs_torch, scorer_vs_torch

SCORER = "scorer"  # the part folder of a two-head graph that both scorer specs read

ROLES = {DISCRIMINATOR: (2, "discriminator"), UPVOTES: (1, "upvote model")}  # a classifier's labels, and what it is called


@dataclass
class ScorerPart:
    """One scorer graph of the bundle: its part folder, where it comes from and the scores it gives."""

    name: str
    source: str
    roles: tuple[str, ...]
    pair_model: tuple[Any, Any, dict[str, Any]] | None = None  # (model, tokenizer, info) of an export.rankers folder
    checkpoint: Checkpoint | None = None  # else: a transformers sequence classifier


def scorer_parts(discriminator: str, upvotes: str) -> list[ScorerPart]:
    """The scorer graphs for these sources: one two-head graph when both are the same pair-model folder, else one each."""
    if discriminator == upvotes and rankers.is_pair_model(discriminator):
        return [ScorerPart(SCORER, discriminator, (DISCRIMINATOR, UPVOTES), pair_model=rankers.load(discriminator))]
    parts = []
    for role, source in ((DISCRIMINATOR, discriminator), (UPVOTES, upvotes)):
        if rankers.is_pair_model(source):
            parts.append(ScorerPart(role, source, (role,), pair_model=rankers.load(source)))
        else:
            labels, what = ROLES[role]
            parts.append(ScorerPart(role, source, (role,), checkpoint=check_scorer(source, labels, what)))
    return parts


def export_part(part: ScorerPart, fp32_dir: Path) -> None:
    """The part's fp32 graph, tokenizer and config in `fp32_dir`."""
    if part.pair_model is not None:
        model, tokenizer, _ = part.pair_model
        rankers.export_onnx(model, tokenizer, fp32_dir)
    else:
        export_onnx(part.checkpoint, fp32_dir, "text-classification")


def finish_part(fp32_dir: Path, part_dir: Path, scheme: str) -> None:
    """The part folder: the graph dynamically quantized to int8 (any scheme but "none": encoders over whole pairs are
    compute-bound, see `quantize.quantize_scorer`) or copied, then the files the runtime reads beside it."""
    part_dir.mkdir(parents=True)
    if scheme == "none":
        for path in fp32_dir.glob("model.onnx*"):
            shutil.copy(path, part_dir / path.name)
    else:
        quantize_scorer(fp32_dir / "model.onnx", part_dir / "model.onnx")
        optimize_offline(part_dir / "model.onnx")
    copy_part_files(fp32_dir, part_dir)


def part_specs(part: ScorerPart, scores: dict[str, Score]) -> dict[str, ScorerSpec]:
    """The spec of each score the part gives."""
    if part.pair_model is not None:
        model, _, info = part.pair_model
        specs = pair_model_specs(info, model, scores)
        return {role: replace(specs[role], path=part.name) for role in part.roles}
    (role,) = part.roles
    return {role: classifier_spec(part.name, role, part.checkpoint, scores[role])}


def part_checks(part: ScorerPart, part_dir: Path, specs: dict[str, ScorerSpec], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Each score of the exported part against the PyTorch model it came from (`export.validate`)."""
    if part.pair_model is not None:
        model, tokenizer, _ = part.pair_model
        return pair_model_vs_torch(part_dir, {role: specs[role] for role in part.roles}, model, tokenizer, pairs)
    (role,) = part.roles
    return {role: scorer_vs_torch(part_dir, specs[role], part.checkpoint.folder, pairs)}


def classifier_spec(path: str, role: str, source: Checkpoint, score: Score) -> ScorerSpec:
    """A transformers classifier's spec: its kind by role, its tokenizer facts from its config, a regressor's target scaling."""
    config = json.loads((source.folder / "config.json").read_text())
    scaling = source.folder / SCORER_SPEC
    extra = json.loads(scaling.read_text()) if scaling.is_file() else {}  # a regressor trained on standardized targets
    return ScorerSpec(
        path=path,
        kind="probability" if role == DISCRIMINATOR else "regression",
        score=score,
        vocab_size=config["vocab_size"],
        pad_token_id=config.get("pad_token_id") or 0,
        output_scale=float(extra.get("output_scale", 1.0)),
        output_offset=float(extra.get("output_offset", 0.0)),
    )


def pair_model_specs(info: dict[str, Any], model: Any, scores: dict[str, Score]) -> dict[str, ScorerSpec]:
    """The two scorer specs of one two-head graph: realism from `realism_logits`, upvotes from `upvotes`,
    with the upvote head's calibration scale and each head's held-out figures from training."""
    config = model.encoder.config
    shared = {"path": SCORER, "max_length": info.get("options", {}).get("max_length", 128), "pad_token_id": config.pad_token_id or 0,
              "vocab_size": config.vocab_size, "text_normalization": info.get("text_normalization")}
    heads = info.get("heads", {})
    upvotes = heads.get("upvotes", {})
    return {
        DISCRIMINATOR: ScorerSpec(kind="probability", score=scores[DISCRIMINATOR], output=rankers.OUTPUTS[0], label=1,
                                  metrics=heads.get("realism", {}), **shared),
        UPVOTES: ScorerSpec(kind="regression", score=rankers.UPVOTE_SCORE, output=rankers.OUTPUTS[1],
                            pairwise_scale=upvotes.get("bt_scale") if upvotes.get("trained") else None,
                            metrics={"training": upvotes, "evaluation": info.get("evaluation", {})}, **shared),
    }
