"""Sentence-pair scorers: BERT-family sequence classifiers over (comment, reply), exported to ONNX.

A `PairGraph` is one graph and its tokenizer: the pairs are tokenized in one call and run one
pair per run, unpadded, and it returns the outputs asked for. One run per pair keeps a pair's
scores independent of the pairs beside it: a dynamically quantized graph quantizes a run's
activations with one scale, so in a shared batch a candidate's scores would move with its
siblings. The feed holds only the inputs the graph declares (BERT has `token_type_ids`, RoBERTa
and DistilBERT do not), always as int64, as fastembed builds it. A `ScorerSpec` says which output
a score is read from and how (`read_score`).

`Scorers` holds the bundle's scorers. When two specs name the same part folder (one graph with
two heads), it opens one session and runs each pair once, reading both outputs from that run;
otherwise each scorer has its own graph, and each runs every pair.

A relevance scorer (kind "cosine") is a `TextGraph`: it embeds the comment once and each reply
once, apart, and scores each pair by its calibrated cosine (DialogRPT's human-vs-random, as a
bi-encoder: the real reply against replies to other threads). Embedding apart costs one run per
distinct text, and lets a sentence encoder trained on comment-reply pairs keep what it learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from .bundle import Bundle, ScorerSpec
from .errors import BundleError
from .filters import normalize_text
from .sessions import open_part


class PairGraph:
    """One exported (comment, reply) sequence-classification graph with its tokenizer.

    `spec` gives the tokenization (max_length, pad_token_id, vocab_size); `readers` are every spec
    that reads this graph, whose outputs are checked against the graph at load.
    """

    def __init__(self, model_dir: Path, spec: ScorerSpec, threads: int | None = None, readers: Sequence[ScorerSpec] = ()):
        self.session, self.tokenizer = open_part(model_dir, threads)
        # A user's "[SEP]" or "[CLS]" is text, not markup: only the post-processor adds specials.
        self.tokenizer.encode_special_tokens = True
        self.tokenizer.enable_truncation(spec.max_length, strategy="longest_first")
        self.tokenizer.no_padding()  # each pair runs alone (the module's docstring says why)
        self.normalize = spec.text_normalization == "dialogrpt"  # the text the scorer was trained on
        self.input_names = {i.name for i in self.session.get_inputs()}
        outputs = {o.name: o.shape[-1] for o in self.session.get_outputs()}
        for reader in readers or [spec]:
            if reader.output not in outputs:
                raise BundleError(f"scorer graph {model_dir.name} has no output {reader.output!r} (it has {sorted(outputs)}); re-export the bundle")
            width = outputs[reader.output]
            if isinstance(width, int) and width != reader.width:
                raise BundleError(
                    f"scorer {model_dir.name} output {reader.output!r} holds {width} values, its manifest says {reader.kind}; re-export the bundle"
                )
        vocab = self.tokenizer.get_vocab_size()
        if spec.vocab_size is not None and vocab > spec.vocab_size:
            raise BundleError(f"scorer {model_dir.name}'s tokenizer has {vocab} tokens, its model {spec.vocab_size}; re-export the bundle")

    def run(self, pairs: Sequence[tuple[str, str]], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """The named outputs for every (comment, reply) pair, one run per pair, as float64 (pairs, width)."""
        if self.normalize:
            pairs = [(normalize_text(comment), normalize_text(reply)) for comment, reply in pairs]
        names = list(dict.fromkeys(outputs))
        runs = []
        for e in self.tokenizer.encode_batch(list(pairs)):
            feed = {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
            runs.append(self.session.run(names, {k: v for k, v in feed.items() if k in self.input_names}))
        return {name: np.concatenate([values[i] for values in runs]).astype(np.float64) for i, name in enumerate(names)}


class TextGraph:
    """One exported text-embedding graph (kind "cosine") with its tokenizer: one text per run, unpadded."""

    def __init__(self, model_dir: Path, spec: ScorerSpec, threads: int | None = None):
        self.session, self.tokenizer = open_part(model_dir, threads)
        self.tokenizer.encode_special_tokens = True
        self.tokenizer.enable_truncation(spec.max_length)
        self.tokenizer.no_padding()
        self.normalize = spec.text_normalization == "dialogrpt"
        self.input_names = {i.name for i in self.session.get_inputs()}
        if spec.output not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"relevance graph {model_dir.name} has no output {spec.output!r}; re-export the bundle")
        self.output = spec.output

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length embeddings of `texts`, (texts, dim) float64."""
        rows = []
        for e in self.tokenizer.encode_batch([normalize_text(t) if self.normalize else t for t in texts]):
            feed = {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
            rows.append(self.session.run([self.output], {k: v for k, v in feed.items() if k in self.input_names})[0][0])
        vectors = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def score(self, spec: ScorerSpec, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """sigmoid(scale · cos + offset) of each (comment, reply) pair; each distinct text is embedded once."""
        if not pairs:
            return np.zeros(0)
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        vectors = dict(zip(texts, self.embed(texts)))
        cosine = np.array([vectors[comment] @ vectors[reply] for comment, reply in pairs])
        return 1 / (1 + np.exp(-(spec.output_scale * cosine + spec.output_offset)))


def read_score(spec: ScorerSpec, output: np.ndarray) -> np.ndarray:
    """One score per pair from the spec's output (pairs, width): a probability or a rescaled regression."""
    if spec.kind == "regression":
        return output[:, 0] * spec.output_scale + spec.output_offset
    logits = output - output.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return probs[:, spec.label] / probs.sum(axis=-1)


def score_pairs(graph: PairGraph, specs: Sequence[ScorerSpec], pairs: Sequence[tuple[str, str]]) -> list[np.ndarray]:
    """Each spec's scores of `pairs`, all read from the same runs of `graph` (one per pair)."""
    if not pairs:
        return [np.zeros(0) for _ in specs]
    outputs = graph.run(pairs, [spec.output for spec in specs])
    return [read_score(spec, outputs[spec.output]) for spec in specs]


class Scorers:
    """A bundle's scorers by part name; specs that share a folder share its session and its run."""

    def __init__(self, bundle: Bundle, threads: int | None = None, pool: Executor | None = None):
        self.specs = bundle.scorers
        by_path: dict[str, list[str]] = {}
        for name, spec in self.specs.items():
            by_path.setdefault(spec.path, []).append(name)
        self.names_by_path = by_path

        def open_graph(path: str) -> PairGraph | TextGraph:
            readers = [self.specs[name] for name in by_path[path]]
            if readers[0].kind == "cosine":
                return TextGraph(bundle.folder(readers[0]), readers[0], threads)
            return PairGraph(bundle.folder(readers[0]), readers[0], threads, readers)

        if pool is None:
            self.graphs = {path: open_graph(path) for path in by_path}
        else:  # opened side by side with the generator (Bot's load)
            futures = {path: pool.submit(open_graph, path) for path in by_path}
            self.graphs = {path: future.result() for path, future in futures.items()}

    def graph(self, name: str) -> PairGraph | TextGraph:
        """The graph the scorer `name` ("discriminator", "upvotes" or "relevance") reads."""
        return self.graphs[self.specs[name].path]

    def score(self, pairs: Sequence[tuple[str, str]], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Scores of `pairs` by scorer name (all scorers, or `names`); each graph runs once per pair, for all its scorers."""
        wanted = list(names or self.specs)
        scores: dict[str, np.ndarray] = {}
        for path, graph in self.graphs.items():
            readers = [n for n in self.names_by_path[path] if n in wanted]
            if readers and isinstance(graph, TextGraph):
                scores[readers[0]] = graph.score(self.specs[readers[0]], pairs)
            elif readers:
                scores.update(zip(readers, score_pairs(graph, [self.specs[n] for n in readers], pairs)))
        return scores

    def __call__(self, comment: str, replies: Sequence[str], names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Scores of each reply to `comment` by scorer name."""
        return self.score([(comment, reply) for reply in replies], names)
