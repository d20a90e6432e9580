"""Sentence-pair scorers: a BERT-family classifier over (comment, reply), exported to ONNX.

All pairs go through the model in one batched call, padded to the batch's longest pair. The
feed holds only the inputs the graph declares (BERT has `token_type_ids`, RoBERTa and
DistilBERT do not), always as int64, as fastembed builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bundle import load_tokenizer
from .errors import BundleError
from .sessions import create_session


class PairScorer:
    """Scores (comment, reply) pairs with one exported sequence-classification model.

    `kind="probability"`: a 2-logit classifier; the score is softmax probability of `label`.
    `kind="regression"`: a 1-output regressor; the score is `output * output_scale + output_offset`
    (the regressor learns standardized targets; the manifest holds the scale to undo that).
    """

    def __init__(self, model_dir: Path, spec: dict[str, Any], threads: int | None = None):
        self.kind: str = spec["kind"]
        self.output_scale = float(spec.get("output_scale", 1.0))
        self.output_offset = float(spec.get("output_offset", 0.0))
        self.label: int = int(spec.get("label", 1))
        self.max_length: int = int(spec.get("max_length", 256))
        self.tokenizer = load_tokenizer(model_dir / "tokenizer.json")
        # A user's "[SEP]" or "[CLS]" is text, not markup: only the post-processor adds specials.
        self.tokenizer.encode_special_tokens = True
        self.tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        pad_id = spec.get("pad_token_id", 0)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=self.tokenizer.id_to_token(pad_id) or "[PAD]")
        self.session = create_session(model_dir / "model.onnx", threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        outputs = self.session.get_outputs()[0].shape[-1]
        expected = 2 if self.kind == "probability" else 1
        if isinstance(outputs, int) and outputs != expected:
            raise BundleError(f"scorer {model_dir.name} outputs {outputs} values, its manifest says {self.kind}; re-export the bundle")
        vocab = self.tokenizer.get_vocab_size()
        embeddings = spec.get("vocab_size")
        if embeddings is not None and vocab > int(embeddings):
            raise BundleError(f"scorer {model_dir.name}'s tokenizer has {vocab} tokens, its model {embeddings}; re-export the bundle")

    def __call__(self, comment: str, replies: list[str]) -> np.ndarray:
        """One score per reply, float64."""
        if not replies:
            return np.zeros(0)
        encodings = self.tokenizer.encode_batch([(comment, reply) for reply in replies])
        feed = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (logits,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.input_names})
        logits = logits.astype(np.float64)
        if self.kind == "regression":
            return logits[:, 0] * self.output_scale + self.output_offset
        logits -= logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        return probs[:, self.label] / probs.sum(axis=-1)
