"""`replyrank batch`: the click command over `run_batch`. The summary goes to stdout as JSON, alone;
progress, warnings and Ray's own messages go to stderr."""

from __future__ import annotations

import contextlib
import glob
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from ..dumps import Filters
from ..environment import missing_package
from ..errors import ReplyrankError
from .options import FORMATS, INSTALL, MAX_GROUP, MODES, PACKAGES, BatchOptions, Selection
from .progress import say
from .run import run_batch


def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())


def _data_files(patterns: tuple[str, ...]) -> list[str]:
    files = [f for pattern in patterns for f in (sorted(glob.glob(pattern)) or [pattern])]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise click.ClickException(f"no such data file: {missing[0]}")
    return files


_MISSING = missing_package(PACKAGES)
_HELP = f"""Rank every comment of Pushshift dumps on Ray Data, into Parquet files in OUT.

--mode reply writes a reply to each selected comment (the pick and every candidate's scores);
--mode score ranks the real replies of every parent (which one replyrank picks, each one's
realism and predicted upvotes). Starts a local Ray on --cpus cores, or joins the cluster at
--address. Run the same command again to resume a killed run. The summary goes to stdout as
JSON, progress to stderr.
""" + (f"\n(needs the batch extra: {INSTALL}; {_MISSING} is missing)" if _MISSING else "")


@click.command(help=_HELP)
@click.option("--data", "data", multiple=True, required=True, help="Pushshift dump (RC_/RS_ .zst/.bz2/.jsonl); repeat, globs allowed.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumed when it holds this run).")
@click.option("--mode", type=click.Choice(MODES), default="reply", show_default=True)
@click.option("--bundle", type=click.Path(), default=None, help="Bundle folder (default: $REPLYRANK_BUNDLE, else the default bundle).")
@click.option("--address", default=None, help="Join the Ray cluster at this address (auto: the one this node belongs to) instead of starting one.")
@click.option("--cpus", type=int, default=None, help="Local mode: cores Ray may use (default: all).")
@click.option("--workers", type=int, default=None, help="Actors, each with one loaded bot (default: cores // threads).")
@click.option("--threads", type=int, default=1, show_default=True, help="ONNX Runtime threads per actor (= CPUs reserved per actor).")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="parquet", show_default=True)
@click.option("--min-score", type=int, default=None, help="Rank only rows with at least this Reddit score.")
@click.option("--subreddit", "subreddits", multiple=True, help="Rank only these subreddits (repeatable).")
@click.option("--since", type=click.DateTime(), default=None, help="Rank rows created at or after this UTC date/time.")
@click.option("--until", type=click.DateTime(), default=None, help="Rank rows created before this UTC date/time.")
@click.option("--min-chars", type=int, default=Filters.min_chars, show_default=True)
@click.option("--max-chars", type=int, default=Filters.max_chars, show_default=True)
@click.option("--limit", type=int, default=None, help="Read at most this many rows of each dump.")
@click.option("-n", "--candidates", type=int, default=None, help="Reply mode: candidates per comment (default: the bundle's).")
@click.option("--max-new-tokens", type=int, default=None, help="Reply mode (default: the bundle's).")
@click.option("--temperature", type=float, default=None, help="Reply mode (default: the bundle's).")
@click.option("--top-k", type=int, default=None, help="Reply mode (default: the bundle's).")
@click.option("--top-p", type=float, default=None, help="Reply mode (default: the bundle's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Each row's candidates come from a seed drawn from this and its id.")
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's).")
@click.option("--strict", is_flag=True, help="When no candidate reaches the threshold, keep none.")
@click.option("--buckets", type=int, default=None, help="Parquet files each dump is staged into, by thread (default: one per 16 MiB of dump).")
@click.option("--shard-rows", type=int, default=None, help="Output rows per committed shard (default: 256 reply, 4096 score).")
@click.option("--group-size", type=int, default=MAX_GROUP, show_default=True, help="Score mode: siblings ranked together, at most.")
@click.option("--batch-size", type=int, default=None, help="Rows per map_batches call (default: 8 reply, 16 groups score).")
def batch(data: tuple[str, ...], out: str, bundle: str | None, mode: str, subreddits: tuple[str, ...], since: datetime | None,
          until: datetime | None, min_score: int | None, min_chars: int, max_chars: int, candidates: int | None,
          max_new_tokens: int | None, temperature: float | None, top_k: int | None, top_p: float | None, **how: Any) -> None:
    missing = missing_package(PACKAGES)
    if missing:
        raise click.ClickException(f"`replyrank batch` needs the batch extra ({missing} is missing): {INSTALL}")
    from ..locations import default_bundle_dir

    selection = Selection(Filters(min_chars=min_chars, max_chars=max_chars), min_score,
                          tuple(s.lower() for s in subreddits), _epoch(since), _epoch(until))
    given = {"candidates": candidates, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    options = BatchOptions(mode=mode, selection=selection, sampling={k: v for k, v in given.items() if v is not None}, **how)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Ray prints its workers' warnings to stdout: the summary goes there alone
            summary = run_batch(_data_files(data), out, bundle or default_bundle_dir(), options)
    except ReplyrankError as error:
        raise click.ClickException(str(error)) from None
    say(
        f"done: {summary['output_rows']:,} rows in {summary['results']} ({summary['errors']} errors); "
        f"read {summary['rows_read']:,}, skipped {sum(summary['skipped'].values()):,} "
        f"({', '.join(f'{k} {v:,}' for k, v in summary['skipped'].items()) or 'none'}); "
        f"rank {summary['rates']['rank_rows_per_s'] or '-'} rows/s"
    )
    click.echo(json.dumps(summary))
