"""Do the bundle's replies run as long as real ones? Issue #31's length measure, per `max_new_tokens`.

On held-out comments that have real replies, the bundle replies with its deployment sampling at
each `max_new_tokens` given, with the same seed per comment at every setting (the settings take
turns per comment, so load on a shared host falls on all of them alike). Reported per setting:

- the share of candidates (and of picks) that reached the cap: `Candidate.finish_reason == "length"`
  (such a reply was then cut back to its last whole sentence);
- the character length (median and quartiles) of candidates and picks beside the real replies to
  the same comments, overall and per subreddit;
- the Spearman correlation of pick length with the comment's length, beside the real replies' (every
  real reply, and the first real reply per comment, which matches the picks one for one);
- the median wall time of `Bot.reply` and its ratio to the first setting's;
- the medians of the candidates' and picks' realism, relevance and pick score, beside the real replies'.

    D=../shared/data/reddit/college
    python benchmarks/length.py --bundle BUNDLE \\
        --data $D/RC_GradSchool.zst --data $D/RS_GradSchool.zst --data $D/RC_CollegeRant.zst --data $D/RS_CollegeRant.zst \\
        --comments 80 --out benchmarks/results/length.json
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

import replyrank
from replyrank.dumps import Filters, Pair, load_pairs
from replyrank.environment import cpu_model
from replyrank.metrics import spearman
from replyrank.options import MAX_COMMENT_CHARS

from portable import checkout, portable

SCORES = ("realism", "relevance", "pick_score")


def comments_with_replies(files: list[str], count: int, seed: int) -> list[list[Pair]]:
    """`count` comments (as even a share per subreddit as the data allows), each with every real reply to it, earliest first."""
    by_parent: dict[str, list[Pair]] = {}
    for pair in load_pairs(files, Filters(max_chars=MAX_COMMENT_CHARS)):
        by_parent.setdefault(pair.parent_id, []).append(pair)
    by_subreddit: dict[str, list[list[Pair]]] = {}
    for replies in sorted(by_parent.values(), key=lambda r: r[0].parent_id):
        replies.sort(key=lambda p: (p.created_utc, p.reply_id))
        by_subreddit.setdefault(replies[0].subreddit, []).append(replies)
    rng = random.Random(seed)
    for groups in by_subreddit.values():
        rng.shuffle(groups)
    chosen: list[list[Pair]] = []
    while len(chosen) < count and any(by_subreddit.values()):
        for groups in by_subreddit.values():  # one comment from each subreddit in turn
            if groups and len(chosen) < count:
                chosen.append(groups.pop())
    return chosen


def quartiles(values: list[float]) -> dict[str, float | int | None]:
    """n, the median and both quartiles (None where there is nothing to measure)."""
    if not values:
        return {"n": 0, "q1": None, "median": None, "q3": None}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"n": len(values), "q1": float(q1), "median": float(median), "q3": float(q3)}


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def summarize(runs: list[dict], groups: list[list[Pair]]) -> dict:
    """One setting's figures from its runs (one per comment, in `groups`' order)."""
    candidates = [c for run in runs for c in run["candidates"]]
    picks = [run["pick"] for run in runs]
    parents = [len(g[0].parent) for g in groups]
    picked = [(len(g[0].parent), len(p["text"])) for g, p in zip(groups, picks) if p is not None]
    by_subreddit = {}
    for name in sorted({g[0].subreddit for g in groups}):
        mine = [i for i, g in enumerate(groups) if g[0].subreddit == name]
        by_subreddit[name] = {
            "comments": len(mine),
            "candidate_chars": quartiles([len(c["text"]) for i in mine for c in runs[i]["candidates"]]),
            "pick_chars": quartiles([len(picks[i]["text"]) for i in mine if picks[i] is not None]),
            "real_chars": quartiles([len(p.reply) for i in mine for p in groups[i]]),
        }
    return {
        "comments": len(runs),
        "candidates": len(candidates),
        "share_candidates_at_cap": float(np.mean([c["finish_reason"] == "length" for c in candidates])),
        "share_picks_at_cap": float(np.mean([p["finish_reason"] == "length" for p in picks if p is not None])),
        "finish_reasons": {r: sum(c["finish_reason"] == r for c in candidates) for r in sorted({c["finish_reason"] for c in candidates})},
        "candidate_chars": quartiles([len(c["text"]) for c in candidates]),
        "pick_chars": quartiles([len(p["text"]) for p in picks if p is not None]),
        "spearman_pick_chars_vs_comment_chars": spearman([a for a, _ in picked], [b for _, b in picked]),
        "spearman_candidate_median_chars_vs_comment_chars": spearman(
            parents, [float(np.median([len(c["text"]) for c in run["candidates"]])) for run in runs]),
        "reply_seconds": quartiles([run["seconds"] for run in runs]),
        "scores": {
            "candidates": {s: median([c[s] for c in candidates]) for s in SCORES},
            "picks": {s: median([p[s] for p in picks if p is not None]) for s in SCORES},
        },
        "fallback_picks": sum(run["note"] is not None for run in runs),
        "by_subreddit": by_subreddit,
    }


def real_figures(groups: list[list[Pair]], bot: replyrank.Bot) -> dict:
    """The real replies' lengths, their correlation with the comment's, and their scores (raw, as `score_pairs` gives them)."""
    pairs = [p for g in groups for p in g]
    first = [g[0] for g in groups]
    scores = bot.score_pairs([(p.parent, p.reply) for p in first])
    return {
        "replies": len(pairs),
        "chars_all": quartiles([len(p.reply) for p in pairs]),
        "chars_first_per_comment": quartiles([len(p.reply) for p in first]),
        "spearman_chars_vs_comment_chars_all": spearman([len(p.parent) for p in pairs], [len(p.reply) for p in pairs]),
        "spearman_chars_vs_comment_chars_first": spearman([len(p.parent) for p in first], [len(p.reply) for p in first]),
        "comment_chars": quartiles([len(p.parent) for p in first]),
        "scores_first_per_comment": {name: float(np.median(values)) for name, values in scores.items()},
        "by_subreddit": {name: {"comments": sum(g[0].subreddit == name for g in groups),
                                "chars": quartiles([len(p.reply) for p in pairs if p.subreddit == name])}
                         for name in sorted({p.subreddit for p in pairs})},
    }


def one_reply(bot: replyrank.Bot, comment: str, options: replyrank.GenerationOptions) -> dict:
    start = time.perf_counter()
    result = bot.reply(comment, options)
    seconds = time.perf_counter() - start

    def row(c: replyrank.Candidate) -> dict:
        return {"text": c.text, "finish_reason": c.finish_reason, "realism": c.realism, "relevance": c.relevance,
                "pick_score": c.pick_score, "kept": c.kept}

    return {"seconds": seconds, "note": result.note, "pick": row(result.best) if result.best else None,
            "candidates": [row(c) for c in result.candidates]}


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--data", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False), help="RC_ and RS_ dumps of held-out subreddits.")
@click.option("--comments", type=int, default=80, show_default=True)
@click.option("--max-new-tokens", "settings", type=int, multiple=True, default=(40, 64, 96), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the comments; comment i is replied to with seed + i at every setting.")
@click.option("--threads", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default="benchmarks/results/length.json", show_default=True)
def main(bundle: str, data: tuple[str, ...], comments: int, settings: tuple[int, ...], seed: int, threads: int | None, out: str) -> None:
    load_start = os.getloadavg()
    started = datetime.now(timezone.utc)
    measured = checkout()  # the code this process loads now, before others' commits land in a shared tree
    bot = replyrank.load(bundle, threads=threads)
    groups = comments_with_replies(list(data), comments, seed)
    click.echo(f"{len(groups)} comments, {sum(map(len, groups))} real replies; settings {settings}", err=True)
    runs: dict[int, list[dict]] = {n: [] for n in settings}
    for i, group in enumerate(groups):
        for n in settings:
            runs[n].append(one_reply(bot, group[0].parent, replace(bot.sampling, max_new_tokens=n, seed=seed + i)))
        click.echo(f"{i + 1}/{len(groups)} " + " ".join(f"{n}:{runs[n][-1]['seconds']:.1f}s" for n in settings), err=True)
    figures = {str(n): summarize(runs[n], groups) for n in settings}
    base = figures[str(settings[0])]["reply_seconds"]["median"]
    for n in settings:
        figures[str(n)]["reply_seconds_median_ratio"] = figures[str(n)]["reply_seconds"]["median"] / base
    report = {
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python benchmarks/length.py", *("BUNDLE" if a == bundle else a for a in sys.argv[1:])]),
        **measured,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "bundle_recipe": (bot.bundle.training or {}).get("default_recipe"),
        "sampling": {k: v for k, v in vars(bot.sampling).items() if k not in ("max_new_tokens", "seed")},
        "cap_measured_by": "Candidate.finish_reason == 'length' (the candidate reached max_new_tokens)",
        "real": real_figures(groups, bot),
        "settings": figures,
        "samples": [{"comment": g[0].parent[:300], "subreddit": g[0].subreddit, "real": g[0].reply[:300],
                     "picks": {str(n): (runs[n][i]["pick"] or {}).get("text") for n in settings}} for i, g in enumerate(groups[:6])],
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(portable(json.dumps(report, indent=2)) + "\n")
    click.echo(f"wrote {out}", err=True)


if __name__ == "__main__":
    main()
