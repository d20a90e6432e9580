"""The bundle: one folder with a manifest (`replyrank.json`) and one sub-folder per model graph.

    bundle/
      replyrank.json        format version, hashes, prompt template, score meanings, threshold, validation
      README.md             the model card (Hugging Face layout), written by the export; not hashed
      generator/            model.onnx (graph), model.onnx.data (weights), config.json, tokenizer.json
                            [training_ngrams.npy: hashed n-grams of the training replies, optional]
                            [prefix_cache.npz: the template prefix's KV cache, from the fp32 graph, optional]
      discriminator/        model.onnx, model.onnx.data, config.json, tokenizer.json
      upvotes/              model.onnx, model.onnx.data, config.json, tokenizer.json
      relevance/            model.onnx, model.onnx.data, config.json, tokenizer.json: a text embedder [optional]

This module is the contract between the build side and the runtime, as faster-whisper's
`TranscriptionOptions` is between its writer and reader: frozen dataclasses (`Bundle`,
`GeneratorSpec`, `ScorerSpec`, `Score`) with their defaults, read and written here and nowhere
else. The export side builds them and calls `Bundle.write`; the runtime calls `Bundle.read` and
keeps what it resolves (the folder it read, sessions) outside the specs.

A ranking bundle has no generator part (and no `generator` entry): it scores replies written
elsewhere and `Bot.reply` raises `RankingOnly`. The optional relevance scorer is a text embedder of
its own (kind "cosine"). The two pair scorers may share one graph with one output each
(`ScorerSpec.output`), so each pair runs once (`replyrank.score.Scorers`).

`Bundle.read` checks everything that can be checked without running a model (format version,
paths inside the folder, every file present with its recorded sha256), so a half-copied or edited
bundle fails at load time with a message that says what to do, never at the first call.

Format versions: 3 is a ranking bundle's; 2 adds `ScorerSpec.output` and the generator's `sampling`
and lets the scorers share a path; 1 lacks them and is read as 2 with their defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError
from .filters import COPY_WORDS
from .options import GenerationOptions

# A manifest is written at the oldest version that describes it: replyrank 0.1 (which reads 1 and 2) reads every bundle
# with a generator, and asks for an upgrade at a ranking bundle instead of misreading it.
FORMAT_VERSION = 2  # a bundle with a generator
RANKING_VERSION = 3  # a ranking bundle: its manifest has no generator entry
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "replyrank.json"
MODEL_CARD = "README.md"  # beside the manifest: the model card (Hugging Face's layout), written by the export
STAMP = ".replyrank-verified.json"  # (size, mtime, sha256) of files already verified
GENERATOR, DISCRIMINATOR, UPVOTES, RELEVANCE = "generator", "discriminator", "upvotes", "relevance"
PARTS = (GENERATOR, DISCRIMINATOR, UPVOTES, RELEVANCE)
SCORERS = (DISCRIMINATOR, UPVOTES, RELEVANCE)
OPTIONAL_PARTS = (RELEVANCE,)  # a manifest without one reads as a bundle without that scorer
SCORER_KINDS = ("probability", "regression", "cosine")
REALISM_THRESHOLD = 0.5  # a candidate is kept at realism >= this, until export calibrates the bundle's own
SCORER_MAX_LENGTH = 256  # tokens of a (comment, reply) pair, longest first truncated
# GenerationOptions fields that belong to one call, not to a deployment: never written into a manifest
PER_CALL_OPTIONS = ("seed",)
TEXT_NORMALIZATIONS = ("dialogrpt",)  # see replyrank.filters.normalize_text
TRAINING_NGRAMS = "training_ngrams.npy"  # in the generator folder, see export.assemble.with_training_ngrams
PREFIX_CACHE = "prefix_cache.npz"  # in the generator folder, see export.assemble.with_prefix_cache
REEXPORT = "re-export it with `replyrank export` (the default bundle: `replyrank build-default --force`)"


@dataclass(frozen=True)
class Score:
    """What a scorer's number means: its `name` in results, what it estimates, on what scale."""

    name: str
    meaning: str
    scale: str


DEFAULT_SCORES = {
    DISCRIMINATOR: Score("realism", "probability that a human wrote the reply to the comment", "0-1"),
    UPVOTES: Score("upvotes", "predicted Reddit score s of the reply", "sign(s)·log1p(|s|)"),
    RELEVANCE: Score("relevance", "probability that the reply answers this comment rather than another thread's", "0-1"),
}


@dataclass(frozen=True)
class GeneratorSpec:
    """The generator part: a KV-cache causal LM graph and how to prompt it.

    kv_cache: "in-place" when the graph's attention writes new keys and values into a past buffer
              that has room (GroupQueryAttention), "concat" when it returns a grown copy.
    sampling: the deployment's sampling options: `Bot.reply`'s defaults, the ones the discriminator's
              fakes were sampled with and the realism threshold was calibrated on.
    training_ngrams: a file in the generator folder holding the sorted 64-bit hashes of every run of
              `training_ngram_words` words in the generator's training replies (`replyrank.filters`),
              so that candidates copying one are dropped; None when the bundle carries none.
    prefix_cache: a file in the generator folder holding the KV cache of the prompt template's prefix
              (everything before {comment}) as the fp32 graph computed it at export, with the prefix's
              token ids (`ids`) and one array per `past_key_values.*` input, (1, kv heads, prefix, head dim);
              the runtime starts every prompt from it instead of prefilling the prefix with the
              quantized graph; None when the bundle carries none.
    """

    path: str
    prompt_template: str  # contains {comment} once
    eos_token_ids: tuple[int, ...]
    context_length: int
    bos_token_id: int | None = None  # prepended to the prompt where the tokenizer would add it
    vocab_size: int | None = None
    architecture: str | None = None
    graph: str | None = None  # which exporter wrote the graph
    kv_cache: str = "concat"
    sampling: GenerationOptions = GenerationOptions()
    training_ngrams: str | None = None
    training_ngram_words: int = COPY_WORDS
    prefix_cache: str | None = None
    files: Mapping[str, str] = field(default_factory=dict)  # name -> sha256, filled by Bundle.write


@dataclass(frozen=True)
class ScorerSpec:
    """One scorer: how to read a (comment, reply) sequence-classification graph's `output`.

    kind "probability": the output holds 2 logits per pair; the score is the softmax probability of `label`.
    kind "regression":  the output holds 1 value per pair; the score is `value * output_scale + output_offset`
                        (a regressor learns standardized targets; the scale undoes that).
    kind "cosine":      the graph embeds one text per run (`output`: one vector per text); the score is
                        sigmoid(output_scale · cos(comment, reply) + output_offset), a calibrated probability.
    Two scorers with the same `path` share that graph: same tokenizer, one run, one output each.
    pairwise_scale: how much a difference of this score says about which of two replies Reddit
                    scores higher; selection weighs the upvote score by it (None: never measured,
                    so the score cannot override realism; see `replyrank.bot`).
    """

    path: str
    kind: str
    score: Score
    output: str = "logits"
    label: int = 1
    output_scale: float = 1.0
    output_offset: float = 0.0
    max_length: int = SCORER_MAX_LENGTH
    pad_token_id: int = 0
    vocab_size: int | None = None  # of the graph's embedding table: the tokenizer must not exceed it
    text_normalization: str | None = None  # "dialogrpt": links → "(URL)", quoted lines dropped, before tokenizing
    pairwise_scale: float | None = None  # k in P(a outscores b) = sigmoid(k·(a − b)), fitted on held-out pairs
    metrics: Mapping[str, Any] = field(default_factory=dict)  # held-out figures of this score (replyrank eval's)
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def width(self) -> int | None:
        """Values per pair the output must hold (None: an embedding, of any width)."""
        return {"probability": 2, "regression": 1}.get(self.kind)


@dataclass(frozen=True)
class Bundle:
    """A bundle's manifest, typed. `root` is where it was read from (None for one not yet written).

    `generator` is None in a ranking bundle: scorers only.
    """

    generator: GeneratorSpec | None
    discriminator: ScorerSpec
    upvotes: ScorerSpec
    relevance: ScorerSpec | None = None
    realism_threshold: float = REALISM_THRESHOLD
    threshold_calibration: str | None = None  # how the threshold was set
    quantization: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict)  # part -> what it was exported from
    validation: Mapping[str, Any] = field(default_factory=dict)  # the export's parity and quality report
    training: Mapping[str, Any] | None = None  # metrics, where replyrank trained the models
    replyrank_version: str | None = None
    format_version: int = FORMAT_VERSION  # the version read; `write` writes `written_version`
    root: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.generator is not None and self.generator.path in (spec.path for spec in self.scorers.values()):
            raise BundleError(f"the generator and a scorer share the folder {self.generator.path!r}; {REEXPORT}")
        if self.relevance is not None and (self.relevance.kind != "cosine" or self.relevance.path in (self.discriminator.path, self.upvotes.path)):
            raise BundleError(f"the relevance scorer must be a cosine embedder in a folder of its own; {REEXPORT}")
        if "cosine" in (self.discriminator.kind, self.upvotes.kind):
            raise BundleError(f"only the relevance scorer can be a cosine embedder; {REEXPORT}")
        if self.shared_scorer:
            first, second = self.discriminator, self.upvotes
            if first.output == second.output:
                raise BundleError(f"both scorers read output {first.output!r} of {first.path!r}; a shared graph needs one output each")
            for key in ("max_length", "pad_token_id", "vocab_size", "text_normalization"):
                if getattr(first, key) != getattr(second, key):
                    raise BundleError(f"the scorers share {first.path!r} but not its {key}; {REEXPORT}")

    @property
    def shared_scorer(self) -> bool:
        """True when both scorers read one graph (one session; each pair runs once, for both scores)."""
        return self.discriminator.path == self.upvotes.path

    @property
    def ranking_only(self) -> bool:
        """True for a ranking bundle: scorers and no generator."""
        return self.generator is None

    @property
    def written_version(self) -> int:
        """The format version `write` gives the manifest (RANKING_VERSION for a ranking bundle, else FORMAT_VERSION)."""
        return RANKING_VERSION if self.ranking_only else FORMAT_VERSION

    @property
    def scorers(self) -> dict[str, ScorerSpec]:
        """Every scorer the bundle holds, by part name (relevance only where it has one)."""
        optional = {RELEVANCE: self.relevance} if self.relevance is not None else {}
        return {DISCRIMINATOR: self.discriminator, UPVOTES: self.upvotes, **optional}

    @property
    def parts(self) -> dict[str, GeneratorSpec | ScorerSpec]:
        """Every part the bundle holds, by name: the generator (unless a ranking bundle) and the scorers."""
        return {**({GENERATOR: self.generator} if self.generator is not None else {}), **self.scorers}

    def folder(self, spec: GeneratorSpec | ScorerSpec) -> Path:
        """The resolved folder of a part of this bundle as read."""
        if self.root is None:
            raise BundleError("this bundle has not been read from or written to a folder")
        return inside(self.root, spec.path)

    def read_training_ngrams(self) -> np.ndarray | None:
        """The generator's training-reply n-gram hashes (sorted uint64), or None when the bundle carries none."""
        name = self.generator.training_ngrams if self.generator is not None else None
        if self.generator is None or name is None:
            return None
        path = inside(self.folder(self.generator), name)
        try:
            hashes = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise BundleError(f"{self.generator.path}/{name} is not a readable .npy array ({error}); {REEXPORT}") from None
        if hashes.dtype != np.uint64 or hashes.ndim != 1 or (len(hashes) > 1 and not np.all(hashes[1:] > hashes[:-1])):
            raise BundleError(f"{self.generator.path}/{name} is not a sorted 1-D array of unique uint64 n-gram hashes; {REEXPORT}")
        return hashes

    # ---------------------------------------------------------------- (de)serializing

    def to_json(self) -> dict[str, Any]:
        """The manifest as written (version `written_version`)."""
        data: dict[str, Any] = {"format_version": self.written_version, "replyrank_version": self.replyrank_version}
        for name in ("quantization", "sources", "realism_threshold", "threshold_calibration", "validation", "training"):
            data[name] = getattr(self, name)
        for name, spec in self.parts.items():
            entry = dataclasses.asdict(spec)
            if isinstance(spec, GeneratorSpec):
                entry["eos_token_ids"] = list(spec.eos_token_ids)
                entry["sampling"] = {k: v for k, v in entry["sampling"].items() if k not in PER_CALL_OPTIONS}
                entry["sampling"]["stop"] = list(spec.sampling.stop)
            data[name] = entry
        return data  # a ranking bundle's has no generator entry

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = MANIFEST) -> Bundle:
        """A manifest's dict (any readable version) as a Bundle; a BundleError that says the fix otherwise."""
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise BundleError(
                f"{where} has format version {version!r}; this replyrank reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade replyrank, or {REEXPORT}"
            )
        entries = {}
        for name in PARTS:
            entry = data.get(name)
            if entry is None and (name in OPTIONAL_PARTS or (name == GENERATOR and version == RANKING_VERSION)):
                continue  # a ranking bundle has no generator; relevance is optional
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(entry.get("files"), dict):
                raise BundleError(f"{where} has no valid {name!r} entry; re-export the bundle")
            required = ("prompt_template", "eos_token_ids", "context_length") if name == GENERATOR else ("kind",)
            missing = [key for key in required if key not in entry]
            if missing:
                raise BundleError(f"{where}'s {name!r} entry lacks {', '.join(missing)}; re-export the bundle")
            entries[name] = entry
        threshold = data.get("realism_threshold", REALISM_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise BundleError(f"{where} has realism_threshold {threshold!r}, not a number in [0, 1]; re-export the bundle")
        try:
            return cls(
                generator=_generator_spec(entries[GENERATOR]) if GENERATOR in entries else None,
                discriminator=_scorer_spec(entries[DISCRIMINATOR], DISCRIMINATOR),
                upvotes=_scorer_spec(entries[UPVOTES], UPVOTES),
                relevance=_scorer_spec(entries[RELEVANCE], RELEVANCE) if RELEVANCE in entries else None,
                realism_threshold=float(threshold),
                threshold_calibration=data.get("threshold_calibration"),
                quantization=data.get("quantization"),
                sources=dict(data.get("sources") or {}),
                validation=dict(data.get("validation") or {}),
                training=data.get("training"),
                replyrank_version=data.get("replyrank_version"),
                format_version=version,
            )
        except (TypeError, ValueError) as error:  # a value of the wrong type in a hand-edited manifest
            raise BundleError(f"{where} has an invalid entry ({error}); re-export the bundle") from None

    # ---------------------------------------------------------------- reading and writing

    @classmethod
    def read(cls, bundle_dir: str | Path, verify_hashes: bool = True) -> Bundle:
        """Read and check `bundle_dir/replyrank.json`: format, paths, files present, and (by default) their sha256."""
        root = Path(bundle_dir).expanduser()
        if not root.is_dir():
            raise BundleError(
                f"no bundle at {root}: build the default one with `replyrank build-default`, "
                "or pass --bundle / set REPLYRANK_BUNDLE to a bundle folder"
            )
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{root} has no {MANIFEST}; it is not a replyrank bundle (or its export did not finish)")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BundleError(f"{manifest_path} is not valid JSON ({error}); re-export the bundle") from None
        if not isinstance(data, dict):
            raise BundleError(f"{manifest_path} is not a JSON object; re-export the bundle")
        bundle = replace(cls.from_json(data, str(manifest_path)), root=root.resolve())
        generator = bundle.generator
        for key, named in (("training_ngrams", generator.training_ngrams), ("prefix_cache", generator.prefix_cache)) if generator else ():
            if named is not None and named not in generator.files:
                raise BundleError(f"{manifest_path} names {key} {named!r}, which is not among the generator's files; {REEXPORT}")
        for name, spec in bundle.parts.items():
            bundle.folder(spec)
            for file in spec.files:
                if not inside(root, f"{spec.path}/{file}").is_file():
                    raise BundleError(f"bundle file {spec.path}/{file} is missing from {root}; re-export or re-copy the bundle")
        if verify_hashes:
            bundle.verify()
        return bundle

    def write(self, bundle_dir: str | Path) -> Bundle:
        """Hash every file of every part folder, write the manifest; returns the bundle with its hashes and root."""
        root = Path(bundle_dir)
        hashes: dict[str, dict[str, str]] = {}
        for spec in self.parts.values():
            if spec.path not in hashes:  # a shared scorer folder is hashed once
                folder = root / spec.path
                hashes[spec.path] = {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
        written = replace(
            self,
            generator=None if self.generator is None else replace(self.generator, files=hashes[self.generator.path]),
            discriminator=replace(self.discriminator, files=hashes[self.discriminator.path]),
            upvotes=replace(self.upvotes, files=hashes[self.upvotes.path]),
            relevance=None if self.relevance is None else replace(self.relevance, files=hashes[self.relevance.path]),
            format_version=self.written_version,
            root=root.resolve(),
        )
        (root / MANIFEST).write_text(json.dumps(written.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return written

    def verify(self, use_stamp: bool = True, parts: Iterable[str] | None = None) -> None:
        """Check every listed file's sha256 against the manifest (of `parts` only, by name, where given).

        A file verified before, whose size and modification time are unchanged since, is not hashed
        again: the stamp file beside the manifest records them (written when the folder is writable).
        `use_stamp=False` hashes everything (`replyrank info` does). A bot that opens only the
        scorers checks only theirs: a file it never reads cannot change what it answers.
        """
        if self.root is None:
            raise BundleError("this bundle has not been read from a folder")
        stamp_path = self.root / STAMP
        try:
            stamp = json.loads(stamp_path.read_text()) if use_stamp and stamp_path.is_file() else {}
        except (OSError, ValueError):
            stamp = {}
        wanted = set(self.parts if parts is None else parts)
        verified: dict[str, list] = {}
        for part, spec in self.parts.items():
            if part not in wanted:
                continue
            for name, digest in spec.files.items():
                key = f"{spec.path}/{name}"
                if key in verified:
                    continue  # a shared scorer folder
                path = inside(self.root, key)
                status = path.stat()
                seen = [status.st_size, status.st_mtime_ns, digest]
                if stamp.get(key) != seen and sha256(path) != digest:
                    raise BundleError(
                        f"bundle file {key} does not match the sha256 in {MANIFEST} (changed or corrupted); "
                        "re-export or re-copy the bundle"
                    )
                verified[key] = seen
        # the stamp keeps what it knew of the files not checked now, for the load that opens them
        listed = {f"{spec.path}/{name}" for spec in self.parts.values() for name in spec.files}
        verified = {**{key: seen for key, seen in stamp.items() if key in listed}, **verified}
        if verified != stamp:
            try:
                partial = stamp_path.with_name(f"{STAMP}.{os.getpid()}")
                partial.write_text(json.dumps(verified))
                partial.replace(stamp_path)
            except OSError:
                pass  # a read-only bundle is simply hashed at every load


def _generator_spec(entry: Mapping[str, Any]) -> GeneratorSpec:
    sampling = entry.get("sampling") or {}
    known = {f.name for f in dataclasses.fields(GenerationOptions)} - set(PER_CALL_OPTIONS)
    options = GenerationOptions(**{k: tuple(v) if k == "stop" else v for k, v in sampling.items() if k in known})
    return GeneratorSpec(
        path=entry["path"],
        prompt_template=str(entry["prompt_template"]),
        eos_token_ids=tuple(int(i) for i in entry["eos_token_ids"]),
        context_length=int(entry["context_length"]),
        bos_token_id=None if entry.get("bos_token_id") is None else int(entry["bos_token_id"]),
        vocab_size=None if entry.get("vocab_size") is None else int(entry["vocab_size"]),
        architecture=entry.get("architecture"),
        graph=entry.get("graph"),
        kv_cache=entry.get("kv_cache", "concat"),
        sampling=options,
        training_ngrams=None if entry.get("training_ngrams") is None else str(entry["training_ngrams"]),
        training_ngram_words=int(entry.get("training_ngram_words", COPY_WORDS)),
        prefix_cache=None if entry.get("prefix_cache") is None else str(entry["prefix_cache"]),
        files=dict(entry["files"]),
    )


def _scorer_spec(entry: Mapping[str, Any], name: str) -> ScorerSpec:
    if entry.get("text_normalization") not in (None, *TEXT_NORMALIZATIONS):
        raise ValueError(f"{name} text_normalization {entry['text_normalization']!r} is not one of {TEXT_NORMALIZATIONS}")
    if entry["kind"] not in SCORER_KINDS:
        raise ValueError(f"{name} kind {entry['kind']!r} is not one of {SCORER_KINDS}")
    score = entry.get("score")
    return ScorerSpec(
        path=entry["path"],
        kind=entry["kind"],
        score=Score(**score) if score else DEFAULT_SCORES[name],
        output=entry.get("output", "logits"),  # version 1: every scorer graph's output is `logits`
        label=int(entry.get("label", 1)),
        output_scale=float(entry.get("output_scale", 1.0)),
        output_offset=float(entry.get("output_offset", 0.0)),
        max_length=int(entry.get("max_length", SCORER_MAX_LENGTH)),
        pad_token_id=int(entry.get("pad_token_id") or 0),
        vocab_size=None if entry.get("vocab_size") is None else int(entry["vocab_size"]),
        text_normalization=entry.get("text_normalization"),
        pairwise_scale=None if entry.get("pairwise_scale") is None else float(entry["pairwise_scale"]),
        metrics=dict(entry.get("metrics") or {}),
        files=dict(entry["files"]),
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths, `..` and symlinks that leave it."""
    if Path(relative).is_absolute():
        raise BundleError(f"manifest path {relative!r} is absolute; bundle paths must be relative to the bundle folder")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise BundleError(f"manifest path {relative!r} points outside the bundle folder {root}; rebuild the bundle")
    return resolved
