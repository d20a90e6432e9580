"""`export_bundle`: a generator and its scorers → one validated, quantized bundle folder, written atomically.

Steps: (1) the generator becomes a fused KV-cache graph (onnxruntime-genai's model builder:
GroupQueryAttention with rotary embedding, for the Llama family; export.gpt2's graph of the same
ops for GPT-2) or optimum's `text-generation-with-past` graph (every other causal LM);
(2) the scorers become their graphs (export.scorers: one two-head graph, or one graph each; the optional
relevance scorer a text embedder of its own, export.relevance);
(3) MatMuls are quantized: the generator's to block-wise int8 (or int4), its norm-fed projections
smoothed to dynamic int8 where calibration texts are given (export.quantize), the scorers' to
dynamic int8; the template prefix's KV cache is computed by the fp32 graph; (4) parity and
quality are measured and gated (export.validate); (5) the realism threshold is the one the realism
head's training recorded (calibrated on real replies), else calibrated on the bundle's own candidates;
(6) the manifest and the model card (export.card) are written and the finished folder is moved into
place, so an interrupted export never leaves a half-written bundle behind. A ranking bundle (no
generator) skips the generator's steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import numpy as np

import replyrank
from replyrank.bundle import (
    DEFAULT_SCORES, DISCRIMINATOR, GENERATOR, MANIFEST, PREFIX_CACHE, REALISM_THRESHOLD, RELEVANCE, SCORERS, TRAINING_NGRAMS, UPVOTES,
    Bundle, GeneratorSpec, Score, ScorerSpec,
)
from replyrank.errors import BundleError
from replyrank.environment import cpu_model, int8_dot_product
from replyrank.errors import ReplyrankError
from replyrank.filters import COPY_WORDS, training_ngram_set
from replyrank.generate import GenerationOptions, Generator

from . import gpt2, relevance
from .build_log import build_log, note, terminal
from .card import CardFacts, write_model_card
from .convert import Checkpoint, ExportError, copy_part_files, export_onnx, generator_spec, materialize_causal_lm, split_gguf
from .folders import move_into_place
from .quantize import BITS, BLOCK_SIZE, Calibration, decode_as_one_sequence, optimize_offline, prune_lm_head, quantize_model
from .scorers import ScorerPart, export_part, finish_part, part_checks, part_specs, scorer_parts
from .validate import GATES, generator_quantized_vs_fp32, generator_vs_torch, token_sequences

# Causal LMs that onnxruntime-genai's builder turns into a fused graph; others go through optimum.
FUSED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"}

# The deployment's sampling options: recorded in the bundle (GeneratorSpec.sampling), used by the
# runtime as `Bot.reply`'s defaults, by calibration here and for the discriminator's fakes in training.
DEPLOYMENT = GenerationOptions()


@dataclass
class ExportOptions:
    quantize: str = "int8"  # int8 | int4 | none
    block_size: int = BLOCK_SIZE  # the generator's MatMulNBits block (export.quantize: smaller is nearer fp32, and slower)
    prompt_template: str | None = None
    fused: bool = True  # use onnxruntime-genai's fused graph where the architecture allows it
    quality_gate: bool = True
    realism_threshold: float | None = None  # None: calibrate on the bundle's own candidates
    scores: dict[str, Score] = field(default_factory=lambda: dict(DEFAULT_SCORES))
    sampling: GenerationOptions = DEPLOYMENT
    training: dict[str, Any] | None = None  # metrics of the models, where replyrank trained them
    card: CardFacts = field(default_factory=CardFacts)  # what the model card says that the manifest cannot (export.card)
    sources: dict[str, str] = field(default_factory=dict)  # part -> origin the manifest names, where a part was exported from a temporary folder


def _progress(steps: int) -> Callable[[str], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, file=terminal(), unit="step", bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}]")

    def advance(label: str) -> None:
        bar.set_description(label)
        bar.update(1)
        if bar.n >= bar.total:
            bar.close()

    return advance


def _fused_export(checkpoint: Checkpoint, out_dir: Path, work: Path) -> bool:
    """Build the fused fp32 graph with onnxruntime-genai's builder; False when it does not apply."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(checkpoint.folder).architectures or []
    if not set(architectures) & FUSED_ARCHITECTURES:
        return False
    try:
        from onnxruntime_genai.models.builder import create_model
    except ImportError:
        return False
    with contextlib.redirect_stdout(sys.stderr):  # the builder prints a line per layer and tensor; stdout is for data
        create_model("", str(checkpoint.folder), str(out_dir), "fp32", "cpu", str(work / "genai-cache"), filename="model.onnx")
    copy_part_files(checkpoint.folder, out_dir)
    return True


def _finish_generator(fp32_dir: Path, part_dir: Path, scheme: str, block_size: int, calibration: Calibration | None) -> dict | None:
    """The generator's part folder: its graph quantized (its layout returned) or copied, the files the runtime reads beside it."""
    part_dir.mkdir(parents=True)
    layout = None
    if scheme == "none":
        for path in fp32_dir.glob("model.onnx*"):
            shutil.copy(path, part_dir / path.name)
        prune_lm_head(part_dir / "model.onnx")  # a prefill needs the last position's logits only, a decode step each row's
    else:
        layout = _quantize_generator(fp32_dir, part_dir, scheme, block_size, calibration)
    copy_part_files(fp32_dir, part_dir)
    return layout


def _quantize_generator(fp32_dir: Path, part_dir: Path, scheme: str, block_size: int, calibration: Calibration | None) -> dict:
    """The quantized generator graph in `part_dir` (replacing one there), saved for fast loading, its head pruned; its layout."""
    for old in part_dir.glob("model.onnx*"):
        old.unlink()
    layout = quantize_model(fp32_dir / "model.onnx", part_dir / "model.onnx", scheme, block_size, calibration)
    optimize_offline(part_dir / "model.onnx")
    prune_lm_head(part_dir / "model.onnx")  # a prefill needs the last position's logits only, a decode step each row's
    return layout


def _generator_failures(quality: dict[str, Any]) -> list[str]:
    failures = []
    if quality["sampling_agreement"] < GATES["generator_sampling_agreement"]:
        failures.append(f"generator sampling agreement {quality['sampling_agreement']:.3f} < {GATES['generator_sampling_agreement']}")
    if quality["mean_kl"] > GATES["generator_mean_kl"]:
        failures.append(f"generator mean KL {quality['mean_kl']:.4f} > {GATES['generator_mean_kl']}")
    return failures


def release_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the system (glibc's `malloc_trim`).

    The build frees whole models between its stages, but glibc keeps freed heap pages in its arenas for reuse, so
    each stage's leftovers add to the next one's peak; elsewhere (no glibc) this is only a garbage collection.
    """
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def _fp32_reference(
    fp32_dir: Path, spec: GeneratorSpec, calibration_pairs: list[tuple[str, str]] | None,
) -> tuple[Calibration | None, tuple[list[int], dict[str, np.ndarray]] | None]:
    """What the fp32 graph gives the quantized one: the calibration texts' tokens (None without `calibration_pairs`)
    and the template prefix's ids and KV cache (None without a prefix). Its session is closed on return, so the
    quantizer does not hold a second copy of the fp32 weights beside its own."""
    reference = Generator(fp32_dir, spec)
    calibration = None
    if calibration_pairs:
        calibration = Calibration(token_sequences(reference, calibration_pairs, limit=len(calibration_pairs)), skip=len(reference.prefix_ids))
    prefix = None
    if reference.prefix_cache is not None:
        prefix = reference.prefix_ids, {name: value.numpy() for name, value in reference.prefix_cache.items()}
    return calibration, prefix


def export_generator(
    source: str, part_dir: Path, work: Path, quantize: str = "int8", prompt_template: str | None = None, fused: bool = True,
    sampling: GenerationOptions = DEPLOYMENT, block_size: int = BLOCK_SIZE, calibration_pairs: list[tuple[str, str]] | None = None,
) -> tuple[GeneratorSpec, Checkpoint, dict | None]:
    """One generator part folder (graph, tokenizer, config, prefix cache), its spec and its quantization layout; fp32 graph left in `work`.

    `calibration_pairs`: real (comment, reply) pairs, other than the validation pairs, whose activations fit the int8 smoothing.
    """
    checkpoint = materialize_causal_lm(source, work)
    release_memory()  # the fp32 PyTorch model it loaded and saved
    spec = generator_spec(checkpoint, prompt_template, sampling)
    genai = fused and _fused_export(checkpoint, work / "generator-fp32", work)
    # GPT-2, which the genai builder does not build: the same fused graph from export.gpt2, checked against PyTorch
    fused = genai or (fused and gpt2.build(checkpoint.folder, work / "generator-fp32"))
    if not fused:
        export_onnx(checkpoint, work / "generator-fp32", "text-generation-with-past")
    decode_as_one_sequence(work / "generator-fp32" / "model.onnx")  # fused graphs: the candidates decode as one sequence
    # GroupQueryAttention appends to a past buffer that has room; optimum's attention concatenates
    graph = "fused (onnxruntime-genai builder)" if genai else "fused (export.gpt2: GroupQueryAttention)" if fused else "optimum text-generation-with-past"
    spec = replace(spec, graph=graph, kv_cache="in-place" if fused else "concat")
    release_memory()  # the exporter's copy of the weights
    calibration, prefix = _fp32_reference(work / "generator-fp32", spec, calibration_pairs if quantize == "int8" else None)
    release_memory()
    layout = _finish_generator(work / "generator-fp32", part_dir, quantize, block_size, calibration)
    if prefix is not None:
        spec = with_prefix_cache(spec, part_dir, *prefix)
    ngrams = Path(split_gguf(source)[0]) / TRAINING_NGRAMS  # train_generator's: its training replies' n-gram hashes
    if ngrams.is_file():
        shutil.copy(ngrams, part_dir / TRAINING_NGRAMS)
        spec = replace(spec, training_ngrams=TRAINING_NGRAMS, training_ngram_words=COPY_WORDS)
    return spec, checkpoint, layout


def calibrate_threshold(bundle_dir: Path, comments: list[str], quantile: float = 0.5) -> float:
    """The realism that `quantile` of the bundle's own candidates (deployment sampling) reach: by default the more human half passes.

    A threshold set on real-vs-generated accuracy alone would pass no candidate from a generator the
    discriminator separates well; ranking needs realistic candidates kept, not none.
    """
    bot = replyrank.Bot(bundle_dir, realism_threshold=0.0)
    realism = []
    for i, comment in enumerate(comments):
        result = bot.reply(comment, seed=i)
        realism += [c.realism for c in result.candidates if c.realism is not None]
    if not realism:
        raise ExportError("calibration produced no scorable candidate; check the generator's prompt template")
    return float(np.quantile(realism, 1 - quantile))


def _target(out: Path) -> None:
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not a replyrank bundle; choose an empty or new folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out.parent)
        probe.close()
    except OSError as error:
        raise ExportError(f"cannot write to {out.parent} ({error.strerror}); choose a writable --out folder") from None


def export_bundle(
    generator: str | None,
    discriminator: str,
    upvotes: str,
    out: str | Path,
    validation_pairs: list[tuple[str, str]],
    options: ExportOptions | None = None,
    calibration_pairs: list[tuple[str, str]] | None = None,
    relevance_model: str | None = None,
) -> Bundle:
    """Export, quantize, validate and calibrate a generator and its scorers into the bundle folder `out`, with its
    model card (`export.card`); returns the bundle written. `generator=None` writes a ranking bundle: the scorers alone.

    `discriminator` and `upvotes` are each a pair-model folder (`export.rankers`) or a transformers
    sequence classifier; one pair-model folder given for both becomes one graph. `calibration_pairs`
    (real pairs other than `validation_pairs`) fit the generator's int8 smoothing; without them
    every generator MatMul is MatMulNBits (export.quantize). `relevance_model` (a folder `export.relevance`
    reads) adds the relevance scorer. Third-party output goes to OUT/build.log (`export.build_log`).
    """
    options = options or ExportOptions()
    if options.quantize not in (*BITS, "none"):
        raise ExportError(f"unknown quantization {options.quantize!r}; use int8, int4 or none")
    if len(validation_pairs) < 4:
        raise ExportError("give at least 4 real (comment, reply) pairs for validation")
    out = Path(out).expanduser().resolve()
    _target(out)
    with build_log(out):
        parts = scorer_parts(discriminator, upvotes)
        embedder = (*relevance.load(relevance_model), relevance_model) if relevance_model else None
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            bundle = _write_bundle(staging, generator, parts, validation_pairs, options, calibration_pairs, embedder)
            move_into_place(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return replace(bundle, root=out)


def _write_bundle(
    staging: Path, generator: str, parts: list[ScorerPart], pairs: list[tuple[str, str]], options: ExportOptions,
    calibration_pairs: list[tuple[str, str]] | None, embedder: tuple | None = None,
) -> Bundle:
    """Every part, its checks and the manifest in `staging`; an ExportError where a quantized part misses the gate."""
    advance = _progress(7 if generator else 4)
    with tempfile.TemporaryDirectory(prefix="replyrank-export-") as tmp:
        work = Path(tmp)
        spec, validation = None, {"pairs": len(pairs), "gates": GATES}
        if generator:
            spec, checks = _generator_part(generator, staging / GENERATOR, work, pairs, options, calibration_pairs, advance)
            validation.update(checks)
        for part in parts:
            export_part(part, work / f"{part.name}-fp32")
        advance("scorers exported")
        for part in parts:
            finish_part(work / f"{part.name}-fp32", staging / part.name, options.quantize)
        advance(f"quantized ({options.quantize})")
        scorers = {role: scorer for part in parts for role, scorer in part_specs(part, options.scores).items()}
        for part in parts:
            validation.update({f"{role}_vs_torch": check for role, check in part_checks(part, staging / part.name, scorers, pairs).items()})
        relevance_spec = None
        if embedder is not None:
            relevance_spec, validation[f"{RELEVANCE}_vs_torch"] = _relevance_part(embedder, staging / RELEVANCE, work, pairs, options.quantize)
        advance("scorer quality")
    failures = _gate_failures(validation)
    validation["passed"] = not failures
    if failures and options.quality_gate:
        raise ExportError("quantized bundle below the quality gate: " + "; ".join(failures) + " (use --quantize none, or --no-quality-gate)")
    bundle = Bundle(
        generator=spec,
        discriminator=scorers[DISCRIMINATOR],
        upvotes=scorers[UPVOTES],
        relevance=relevance_spec,
        realism_threshold=REALISM_THRESHOLD,
        quantization=options.quantize,
        sources={**({GENERATOR: generator} if generator else {}), **{role: part.source for part in parts for role in part.roles},
                 **({RELEVANCE: embedder[3]} if embedder else {}), **options.sources},
        validation=validation,
        training=options.training,
        replyrank_version=replyrank.__version__,
    ).write(staging)
    recorded = _recorded_threshold(parts)
    if options.realism_threshold is not None:
        bundle = replace(bundle, realism_threshold=options.realism_threshold)
    elif recorded:
        bundle = replace(bundle, **recorded)
    elif generator:
        threshold = calibrate_threshold(staging, [c for c, _ in pairs[:12]])
        how = "median realism of the bundle's own candidates (deployment sampling) on validation comments"
        bundle = replace(bundle, realism_threshold=threshold, threshold_calibration=how)
    else:
        bundle = replace(bundle, realism_threshold=REALISM_THRESHOLD,
                         threshold_calibration="the default: a ranking bundle has no generator whose candidates could calibrate it")
    bundle = bundle.write(staging)
    write_model_card(bundle, staging, options.card)
    advance("calibrated" if generator else "model card written")
    return bundle


def _relevance_part(embedder: tuple, part_dir: Path, work: Path, pairs: list[tuple[str, str]], scheme: str) -> tuple[ScorerSpec, dict]:
    """The relevance part's folder (a text embedder, int8 like the other scorers), its spec and its check against PyTorch.
    `embedder`: `export.relevance.load`'s (model, tokenizer, info) and the source folder."""
    model, tokenizer, info, _ = embedder
    relevance.export_onnx(model, tokenizer, work / "relevance-fp32")
    finish_part(work / "relevance-fp32", part_dir, scheme)
    spec = relevance.spec(model, info)
    return spec, relevance.check(part_dir, spec, model, tokenizer, pairs)


def _generator_part(
    generator: str, part_dir: Path, work: Path, pairs: list[tuple[str, str]], options: ExportOptions,
    calibration_pairs: list[tuple[str, str]] | None, advance: Callable[[str], None],
) -> tuple[GeneratorSpec, dict[str, Any]]:
    """The generator's part folder, its spec and its checks: parity with PyTorch, and the quantized graph against fp32."""
    spec, checkpoint, layout = export_generator(
        generator, part_dir, work, options.quantize, options.prompt_template, options.fused, options.sampling,
        options.block_size, calibration_pairs,
    )
    release_memory()
    advance("generator exported")
    checks: dict[str, Any] = {"generator_block_size": options.block_size, "generator_layout": layout}
    checks["generator_fp32_vs_torch"] = generator_vs_torch(work / "generator-fp32", spec, checkpoint.folder, pairs)
    release_memory()  # the PyTorch model and the fp32 session of the parity check
    advance("generator parity")
    if options.quantize != "none":
        checks.update(_quantized_generator_quality(work / "generator-fp32", part_dir, spec, layout, pairs, options))
        release_memory()
    advance("generator quality")
    return spec, checks


def _recorded_threshold(parts: list[ScorerPart]) -> dict[str, Any] | None:
    """The realism threshold the realism head's training recorded (`heads.realism.threshold`, calibrated on real replies
    of the data it knows), or None: then a bundle with a generator calibrates one on its own candidates."""
    for part in parts:
        if DISCRIMINATOR in part.roles and part.pair_model is not None:
            recorded = part.pair_model[2].get("heads", {}).get("realism", {})
            if isinstance(recorded.get("threshold"), (int, float)):
                how = recorded.get("threshold_calibration") or "recorded with the realism head's training"
                return {"realism_threshold": float(recorded["threshold"]), "threshold_calibration": how}
    return None


def _quantized_generator_quality(
    fp32_dir: Path, part_dir: Path, spec: GeneratorSpec, layout: dict | None, pairs: list[tuple[str, str]], options: ExportOptions,
) -> dict[str, Any]:
    """The quantized generator against fp32 (`validate.generator_quantized_vs_fp32`) and its layout. A dynamic-int8 layout
    that misses the gate is quantized again, weight-only, and the layout says why."""
    quality = generator_quantized_vs_fp32(fp32_dir, part_dir, spec, pairs, options.sampling)
    missed = _generator_failures(quality)
    if missed and layout and layout["dynamic_int8"] and options.quality_gate:
        note(f"note: the dynamic-int8 layout missed the gate ({'; '.join(missed)}); quantizing weight-only")
        layout = _quantize_generator(fp32_dir, part_dir, options.quantize, options.block_size, None)
        layout["fallback"] = f"the dynamic-int8 layout missed the gate: {'; '.join(missed)}"
        quality = generator_quantized_vs_fp32(fp32_dir, part_dir, spec, pairs, options.sampling)
    if layout and layout["dynamic_int8"]:  # its int8 GEMMs differ between CPUs with and without VNNI
        layout["validated_on"] = {"cpu": cpu_model(), "int8_dot_product": int8_dot_product()}
    return {"generator_layout": layout, "generator_quantized_vs_fp32": quality}


def real_pairs(dumps: list[str]) -> list[tuple[str, str]]:
    """Real (comment, reply) pairs for validation and calibration: from Pushshift dumps if given, else from chitchat-dataset."""
    if dumps:
        from replyrank.dumps import load_pairs

        return [(p.parent, p.reply) for p in load_pairs(dumps, limit=20000)]
    from .chitchat import load_turns

    try:
        return [(t.message, t.reply) for t in load_turns()]
    except ReplyrankError as error:
        raise ExportError(f"{error}; or give --validation-data with Pushshift dumps") from None


def spread(pairs: list[tuple[str, str]], count: int, offset: float = 0.0) -> list[tuple[str, str]]:
    """`count` of `pairs` spread evenly through them; `offset` (0-1) moves every pick within its stretch."""
    step = max(1, len(pairs) // count)
    return pairs[int(offset * step) :: step][:count]


def _gate_failures(validation: dict[str, Any]) -> list[str]:
    quantized = validation.get("generator_quantized_vs_fp32")
    failures = _generator_failures(quantized) if quantized else []
    for part in (f"{name}_vs_torch" for name in SCORERS if f"{name}_vs_torch" in validation):
        check = validation[part]
        # scores that barely vary cannot show a correlation; then the absolute error is what counts
        if check["correlation"] < GATES["scorer_correlation"] and check["max_abs_diff"] > check["tolerance"]:
            failures.append(
                f"{part.split('_')[0]} correlation {check['correlation']:.3f} < {GATES['scorer_correlation']} "
                f"and max abs diff {check['max_abs_diff']:.4f} > {check['tolerance']:.4f}"
            )
    return failures


def with_training_ngrams(spec: GeneratorSpec, generator_dir: str | Path, replies: Iterable[str], words: int = COPY_WORDS) -> GeneratorSpec:
    """Write the hashed `words`-grams of the generator's training `replies` into its folder; the spec that names them.

    For the export side, before `Bundle.write` (which then hashes the file with the folder's others).
    """
    if words < 1:
        raise BundleError(f"training n-grams need at least 1 word, got {words}")
    np.save(Path(generator_dir) / TRAINING_NGRAMS, training_ngram_set(replies, words), allow_pickle=False)
    return replace(spec, training_ngrams=TRAINING_NGRAMS, training_ngram_words=words)


def with_prefix_cache(spec: GeneratorSpec, generator_dir: str | Path, ids: list[int], cache: Mapping[str, np.ndarray]) -> GeneratorSpec:
    """Write the template prefix's token `ids` and its KV `cache` (past input name -> array) into the generator's
    folder; the spec that names them. For the export side, before `Bundle.write`."""
    np.savez(Path(generator_dir) / PREFIX_CACHE, ids=np.array(ids, dtype=np.int64), **cache)
    return replace(spec, prefix_cache=PREFIX_CACHE)
