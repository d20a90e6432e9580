"""`export_bundle`: three trained models → one validated, quantized bundle folder, written atomically.

Steps: (1) the generator becomes a fused KV-cache graph (onnxruntime-genai's model builder:
GroupQueryAttention with rotary embedding, for the Llama family; export.gpt2's graph of the same
ops for GPT-2) or optimum's `text-generation-with-past` graph (every other causal LM); (2) both scorers go
through optimum's `text-classification` export, or one two-head scorer (export.rankers: realism and
upvotes over one encoder) goes through torch.onnx as one graph with two outputs; (3) MatMuls are quantized to block-wise int8
(or int4), with the generator's norm-fed projections smoothed to dynamic int8 where calibration texts are given
(export.quantize), and the template prefix's KV cache computed by the fp32 graph; (4) parity and quality are measured and gated; (5) the realism threshold is
calibrated on the bundle's own candidates; (6) the manifest is written and the finished folder
is moved into place, so an interrupted export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

import replyrank
from replyrank.bundle import (
    DEFAULT_SCORES, DISCRIMINATOR, GENERATOR, MANIFEST, REALISM_THRESHOLD, SCORERS, TRAINING_NGRAMS, UPVOTES, Bundle, GeneratorSpec, Score,
    ScorerSpec, with_prefix_cache,
)
from replyrank.environment import cpu_model, int8_dot_product
from replyrank.errors import ReplyrankError
from replyrank.filters import COPY_WORDS
from replyrank.generate import GenerationOptions, Generator

from .convert import SCORER_SPEC, Checkpoint, ExportError, check_scorer, export_onnx, generator_spec, materialize_causal_lm, split_gguf
from .folders import move_into_place
from .quantize import BITS, BLOCK_SIZE, Calibration, decode_as_one_sequence, optimize_offline, prune_lm_head, quantize_model, quantize_scorer
from . import gpt2, rankers
from .validate import GATES, generator_quantized_vs_fp32, generator_vs_torch, pair_model_vs_torch, scorer_vs_torch, token_sequences

# Causal LMs that onnxruntime-genai's builder turns into a fused graph; others go through optimum.
FUSED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"}
PART_FILES = ("tokenizer.json", "config.json", "generation_config.json")
SCORER = "scorer"  # the part folder of a two-head scorer graph (both scorer specs point at it)

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


def _progress(steps: int) -> Callable[[str], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, file=sys.stderr, unit="step", bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}]")

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
    with contextlib.redirect_stdout(sys.stderr):  # the builder prints progress; stdout is for data
        create_model("", str(checkpoint.folder), str(out_dir), "fp32", "cpu", str(work / "genai-cache"), filename="model.onnx")
    for name in PART_FILES:
        if (checkpoint.folder / name).is_file():
            shutil.copy(checkpoint.folder / name, out_dir / name)
    return True


def _finish_part(
    fp32_dir: Path, part_dir: Path, scheme: str, scorer: bool = False, block_size: int = BLOCK_SIZE, calibration: Calibration | None = None,
) -> dict | None:
    """Quantize (or copy) the fp32 graph into the bundle, with only the files the runtime and optimum need; a generator's layout."""
    part_dir.mkdir(parents=True)
    layout = None
    if scheme == "none":
        for path in fp32_dir.glob("model.onnx*"):
            shutil.copy(path, part_dir / path.name)
    elif scorer:
        quantize_scorer(fp32_dir / "model.onnx", part_dir / "model.onnx")
        optimize_offline(part_dir / "model.onnx")
    else:
        layout = _quantize_generator(fp32_dir, part_dir, scheme, block_size, calibration)
    if scheme == "none" and not scorer:
        prune_lm_head(part_dir / "model.onnx")  # a prefill needs the last position's logits only, a decode step each row's
    for name in PART_FILES:
        if (fp32_dir / name).is_file():
            shutil.copy(fp32_dir / name, part_dir / name)
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


def export_generator(
    source: str, part_dir: Path, work: Path, quantize: str = "int8", prompt_template: str | None = None, fused: bool = True,
    sampling: GenerationOptions = DEPLOYMENT, block_size: int = BLOCK_SIZE, calibration_pairs: list[tuple[str, str]] | None = None,
) -> tuple[GeneratorSpec, Checkpoint, dict | None]:
    """One generator part folder (graph, tokenizer, config, prefix cache), its spec and its quantization layout; fp32 graph left in `work`.

    `calibration_pairs`: real (comment, reply) pairs, other than the validation pairs, whose activations fit the int8 smoothing.
    """
    checkpoint = materialize_causal_lm(source, work)
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
    reference = Generator(work / "generator-fp32", spec)  # fp32: the calibration texts' tokens and the prefix's cache
    calibration = None
    if calibration_pairs and quantize == "int8":
        calibration = Calibration(token_sequences(reference, calibration_pairs, limit=len(calibration_pairs)), skip=len(reference.prefix_ids))
    layout = _finish_part(work / "generator-fp32", part_dir, quantize, block_size=block_size, calibration=calibration)
    if reference.prefix_cache is not None:
        spec = with_prefix_cache(spec, part_dir, reference.prefix_ids, {name: value.numpy() for name, value in reference.prefix_cache.items()})
    ngrams = Path(split_gguf(source)[0]) / TRAINING_NGRAMS  # train_generator's: its training replies' n-gram hashes
    if ngrams.is_file():
        shutil.copy(ngrams, part_dir / TRAINING_NGRAMS)
        spec = replace(spec, training_ngrams=TRAINING_NGRAMS, training_ngram_words=COPY_WORDS)
    return spec, checkpoint, layout


def scorer_spec(name: str, source: Checkpoint, score: Score) -> ScorerSpec:
    """A trained scorer's spec: its kind by role, its tokenizer facts from its config, a regressor's target scaling."""
    config = json.loads((source.folder / "config.json").read_text())
    scaling = source.folder / SCORER_SPEC
    extra = json.loads(scaling.read_text()) if scaling.is_file() else {}  # a regressor trained on standardized targets
    return ScorerSpec(
        path=name,
        kind="probability" if name == DISCRIMINATOR else "regression",
        score=score,
        vocab_size=config["vocab_size"],
        pad_token_id=config.get("pad_token_id") or 0,
        output_scale=float(extra.get("output_scale", 1.0)),
        output_offset=float(extra.get("output_offset", 0.0)),
    )


def pair_model_specs(info: dict[str, Any], model, scores: dict[str, Score]) -> dict[str, ScorerSpec]:
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
    generator: str,
    discriminator: str,
    upvotes: str,
    out: str | Path,
    validation_pairs: list[tuple[str, str]],
    options: ExportOptions | None = None,
    calibration_pairs: list[tuple[str, str]] | None = None,
) -> Bundle:
    """Export, quantize, validate and calibrate three models into the bundle folder `out`; returns the bundle written.

    `calibration_pairs` (real pairs other than `validation_pairs`) fit the generator's int8 smoothing; without them
    every generator MatMul is MatMulNBits (export.quantize)."""
    options = options or ExportOptions()
    if options.quantize not in (*BITS, "none"):
        raise ExportError(f"unknown quantization {options.quantize!r}; use int8, int4 or none")
    if len(validation_pairs) < 4:
        raise ExportError("give at least 4 real (comment, reply) pairs for validation")
    out = Path(out).expanduser().resolve()
    _target(out)
    # one folder with both heads (export.rankers): one graph, one encoder pass for both scores
    pair_model = discriminator == upvotes and rankers.is_pair_model(discriminator)
    if pair_model:
        model, tokenizer, info = rankers.load(discriminator)
    else:
        checkpoints = {DISCRIMINATOR: check_scorer(discriminator, 2, "discriminator"), UPVOTES: check_scorer(upvotes, 1, "upvote model")}
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    advance = _progress(7)
    try:
        with tempfile.TemporaryDirectory(prefix="replyrank-export-") as tmp:
            work = Path(tmp)
            spec, gen, layout = export_generator(
                generator, staging / GENERATOR, work, options.quantize, options.prompt_template, options.fused, options.sampling,
                options.block_size, calibration_pairs,
            )
            advance("generator exported")
            if pair_model:
                rankers.export_onnx(model, tokenizer, work / "scorer-fp32")
                advance("scorer exported (two heads)")
                _finish_part(work / "scorer-fp32", staging / SCORER, options.quantize, scorer=True)
                advance(f"quantized ({options.quantize})")
                scorers = pair_model_specs(info, model, options.scores)
            else:
                for name in SCORERS:
                    export_onnx(checkpoints[name], work / f"{name}-fp32", "text-classification")
                advance("scorers exported")
                for name in SCORERS:
                    _finish_part(work / f"{name}-fp32", staging / name, options.quantize, scorer=True)
                advance(f"quantized ({options.quantize})")
                scorers = {name: scorer_spec(name, checkpoints[name], options.scores[name]) for name in SCORERS}
            validation: dict[str, Any] = {
                "pairs": len(validation_pairs), "gates": GATES, "generator_block_size": options.block_size, "generator_layout": layout,
            }
            validation["generator_fp32_vs_torch"] = generator_vs_torch(work / "generator-fp32", spec, gen.folder, validation_pairs)
            advance("generator parity")
            if options.quantize != "none":
                quality = generator_quantized_vs_fp32(work / "generator-fp32", staging / GENERATOR, spec, validation_pairs, options.sampling)
                missed = _generator_failures(quality)
                if missed and layout and layout["dynamic_int8"] and options.quality_gate:
                    # the dynamic-int8 layout misses the gate on this model: weight-only MatMulNBits instead, and say so
                    print(f"note: the dynamic-int8 layout missed the gate ({'; '.join(missed)}); quantizing weight-only", file=sys.stderr)
                    layout = _quantize_generator(work / "generator-fp32", staging / GENERATOR, options.quantize, options.block_size, None)
                    layout["fallback"] = f"the dynamic-int8 layout missed the gate: {'; '.join(missed)}"
                    validation["generator_layout"] = layout
                    quality = generator_quantized_vs_fp32(work / "generator-fp32", staging / GENERATOR, spec, validation_pairs, options.sampling)
                validation["generator_quantized_vs_fp32"] = quality
                if layout and layout["dynamic_int8"]:  # its int8 GEMMs differ between CPUs with and without VNNI
                    layout["validated_on"] = {"cpu": cpu_model(), "int8_dot_product": int8_dot_product()}
            advance("generator quality")
            if pair_model:
                checks = pair_model_vs_torch(staging / SCORER, scorers, model, tokenizer, validation_pairs)
                validation.update({f"{name}_vs_torch": checks[name] for name in SCORERS})
            else:
                for name in SCORERS:
                    validation[f"{name}_vs_torch"] = scorer_vs_torch(staging / name, scorers[name], checkpoints[name].folder, validation_pairs)
            advance("scorer quality")
        failures = _gate_failures(validation)
        validation["passed"] = not failures
        if failures and options.quality_gate:
            raise ExportError("quantized bundle below the quality gate: " + "; ".join(failures) + " (use --quantize none, or --no-quality-gate)")
        bundle = Bundle(
            generator=spec,
            discriminator=scorers[DISCRIMINATOR],
            upvotes=scorers[UPVOTES],
            realism_threshold=REALISM_THRESHOLD,
            quantization=options.quantize,
            sources={GENERATOR: generator, DISCRIMINATOR: discriminator, UPVOTES: upvotes},
            validation=validation,
            training=options.training,
            replyrank_version=replyrank.__version__,
        ).write(staging)
        if options.realism_threshold is None:
            threshold = calibrate_threshold(staging, [c for c, _ in validation_pairs[:12]])
            how = "median realism of the bundle's own candidates (deployment sampling) on validation comments"
            bundle = replace(bundle, realism_threshold=threshold, threshold_calibration=how)
        else:
            bundle = replace(bundle, realism_threshold=options.realism_threshold)
        bundle = bundle.write(staging)
        advance("calibrated")
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace(bundle, root=out)


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
    for part in (f"{name}_vs_torch" for name in SCORERS):
        check = validation[part]
        # scores that barely vary cannot show a correlation; then the absolute error is what counts
        if check["correlation"] < GATES["scorer_correlation"] and check["max_abs_diff"] > check["tolerance"]:
            failures.append(
                f"{part.split('_')[0]} correlation {check['correlation']:.3f} < {GATES['scorer_correlation']} "
                f"and max abs diff {check['max_abs_diff']:.4f} > {check['tolerance']:.4f}"
            )
    return failures
