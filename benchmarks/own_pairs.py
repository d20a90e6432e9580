"""Does `replyrank train upvotes --pairs FILE` beat the shipped head on the held-out pairs of FILE? Issue #33's measure.

Two steps, around the commands a user runs (`train upvotes --pairs`, `export --scorer`):

- `pairs` writes a preference file (TRL's prompt, chosen, rejected; extra fields: subreddit, thread, scores) of
  Pushshift dumps, by the project's own code: `recipes.load_reddit` (DialogRPT's text normalisation, every
  thread). Two signals: `--signal votes`, the sibling pairs of `dumps.sibling_pairs` with the shipped head's
  selection (`recipes.PairSelection`: neighbours within the hour, score gap >= 3), the crowd's taste; and
  `--signal asker-replied`, a reply the parent's author answered over a sibling they had seen (posted before
  their last comment in the thread) and left unanswered, one reader's taste and the "a user liked one of N
  replies" data a deployment logs (DialogRPT's most-asked question, golsun/DialogRPT#11). `--share` keeps the
  pairs of that share of the threads (a SHA-256 of the thread id, independent of the prompt split): a
  smaller file of the same audience, whose held-out prompts are among the whole file's.
- `compare` scores the held-out pairs of each file (`--split test`, what `replyrank eval --pairs FILE --split
  test` measures) with two bundles through the public API (`replyrank.load_ranker(...).score_pairs`), and
  reports each upvote head's pairwise accuracy with `eval`'s bootstrap interval, length's, and the PAIRED
  difference (trained minus shipped, per pair), with an interval that resamples pairs (as `eval` does) and
  one that resamples prompts (the pairs of one comment are not independent): the claim holds only where
  the difference's interval is above 0. Where the file carries the replies' Reddit scores, it also reports
  how often they order the pairs as the file does: how much of the file's signal is the crowd's vote.

    D=../shared/data/reddit/college
    python benchmarks/own_pairs.py pairs --out gradschool.jsonl $D/RS_GradSchool.zst $D/RC_GradSchool.zst
    python benchmarks/own_pairs.py pairs --share 0.4 --out gradschool-5k.jsonl $D/RS_GradSchool.zst $D/RC_GradSchool.zst
    python benchmarks/own_pairs.py pairs --signal asker-replied --out gradschool-asker.jsonl \\
        $D/RS_GradSchool.zst $D/RC_GradSchool.zst
    python benchmarks/own_pairs.py compare --shipped SHIPPED_BUNDLE --trained MY_BUNDLE \\
        --pairs gradschool-5k.jsonl --pairs gradschool.jsonl --out benchmarks/results/own_pairs.json
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

import replyrank
from replyrank.dumps import Pair, is_submission, iter_rows, sibling_pairs
from replyrank.metrics import bootstrap_interval, mean_interval, pairwise_outcomes
from replyrank.preferences import LENGTH, PreferencePair, evaluate_preferences, held_out, read_preferences, split_preferences

RESAMPLES = 1000  # eval's
UPVOTES = "upvotes"
VOTES, ASKER_REPLIED = "votes", "asker-replied"
DELETED_AUTHORS = frozenset({"[deleted]", "[removed]"})  # Reddit's name for an author who is gone: no one to follow


@click.group()
def main() -> None:
    """Issue #33: your own preference pairs against the shipped upvote head."""


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The preference file to write (JSONL).")
@click.option("--signal", type=click.Choice([VOTES, ASKER_REPLIED]), default=VOTES, show_default=True,
              help="votes: the better-scored of two siblings; asker-replied: a reply the parent's author answered over a "
                   "sibling they saw and did not answer.")
@click.option("--share", type=float, default=1.0, show_default=True, help="Keep the pairs of this share of the threads.")
@click.option("--max-per-parent", type=int, default=4, show_default=True,
              help="asker-replied: at most this many pairs of one parent.")
def pairs(files: tuple[str, ...], out: str, signal: str, share: float, max_per_parent: int) -> None:
    """Write the preference pairs of FILES (RS_ and RC_ dumps) as a preference file."""
    from replyrank.export.recipes import load_reddit

    split = load_reddit(files)
    rows = split["train"] + split["valid"] + split["test"]
    counts: Counter[str] = Counter()
    if signal == VOTES:
        found = _vote_pairs(rows, counts)
    else:
        found = _asker_pairs(rows, _activity(files), max_per_parent, counts)
    with open(out, "w", encoding="utf-8") as f:
        for pair in found:
            if pair["chosen"] == pair["rejected"]:
                counts["identical_replies_left_out"] += 1  # a preference file cannot prefer a text to itself
                continue
            if _position(f"subset:{pair['thread']}") >= share:
                continue
            f.write(json.dumps(pair) + "\n")
            counts["test" if held_out(pair["prompt"]) else "train"] += 1
    click.echo(json.dumps({"files": [Path(f).name for f in files], "signal": signal, "replies": len(rows),
                           "share": share, "written": counts["train"] + counts["test"], **counts}))


def _vote_pairs(rows: list[Pair], counts: Counter[str]) -> list[dict]:
    """The shipped head's own pairs: time-adjacent siblings within the hour whose scores differ by the recipe's gap."""
    from replyrank.export.recipes import PairSelection

    selection = PairSelection()
    found = sibling_pairs(rows, selection.within_seconds, selection.min_gap, adjacent=selection.adjacent)
    counts["sibling_pairs"] = len(found)
    return [{"prompt": p.better.parent, "chosen": p.better.reply, "rejected": p.worse.reply,
             "subreddit": p.better.subreddit, "thread": p.better.thread_id,
             "chosen_score": p.better.score, "rejected_score": p.worse.score} for p in found]


@dataclass
class Activity:
    """Who wrote what in the dumps, read from every row (a comment the filters drop still shows whom its author answered)."""

    authors: dict[str, str] = field(default_factory=dict)  # full name (t1_/t3_ + id) -> author
    answered: set[tuple[str, str]] = field(default_factory=set)  # (author, full name of the comment they replied to)
    last_comment: dict[tuple[str, str], int] = field(default_factory=dict)  # (thread, author) -> their last comment's time


def _activity(files: tuple[str, ...]) -> Activity:
    activity = Activity()
    for path in files:
        for row in iter_rows(path):
            author = str(row.get("author") or "")
            if is_submission(row, Path(path).name[:3].upper()):
                activity.authors["t3_" + str(row.get("id"))] = author
                continue
            try:
                thread, created = str(row["link_id"]).removeprefix("t3_"), int(float(row["created_utc"]))
                activity.authors["t1_" + str(row["id"])] = author
                activity.answered.add((author, str(row["parent_id"])))
            except (KeyError, TypeError, ValueError):
                continue  # load_pairs counts such rows as bad; they answer nothing here either
            key = (thread, author)
            activity.last_comment[key] = max(created, activity.last_comment.get(key, created))
    return activity


def _asker_pairs(rows: list[Pair], activity: Activity, max_per_parent: int, counts: Counter[str]) -> list[dict]:
    """A reply the parent's author answered (chosen) over a sibling they did not answer (rejected).

    The asker's engagement, not the crowd's vote: the kind of "this user liked one of N replies" signal a
    deployment logs. A sibling counts as passed over only if it was posted before the asker's last comment in
    the thread, so it was there to be read; replies by the asker themself are neither. A parent whose author is
    deleted has no asker to follow. `max_per_parent` pairs of a parent are drawn by a hash of its id, so a few
    long threads cannot outweigh the rest.
    """
    by_parent: dict[str, list[Pair]] = {}
    for row in rows:
        by_parent.setdefault(row.parent_id, []).append(row)
    found: list[dict] = []
    for parent_id, replies in by_parent.items():
        asker = activity.authors.get(parent_id, "")
        if not asker or asker in DELETED_AUTHORS:
            counts["parents_without_asker"] += 1
            continue
        others = [r for r in replies if activity.authors.get("t1_" + r.reply_id) != asker]
        chosen = [r for r in others if (asker, "t1_" + r.reply_id) in activity.answered]
        if not chosen:
            continue
        last = activity.last_comment[(chosen[0].thread_id, asker)]
        rejected = [r for r in others if r not in chosen and r.created_utc < last]
        candidates = [(c, r) for c in chosen for r in rejected]
        counts["parents_with_answered_reply"] += 1
        counts["parents_with_pairs"] += bool(candidates)
        if len(candidates) > max_per_parent:
            candidates = random.Random(hashlib.sha256(parent_id.encode()).digest()).sample(candidates, max_per_parent)
        kind = "submission" if parent_id.startswith("t3_") else "comment"
        found += [{"prompt": c.parent, "chosen": c.reply, "rejected": r.reply, "subreddit": c.subreddit, "thread": c.thread_id,
                   "kind": kind, "chosen_score": c.score, "rejected_score": r.score,
                   "chosen_created_utc": c.created_utc, "rejected_created_utc": r.created_utc} for c, r in candidates]
    return found


def _position(key: str) -> float:
    """Where a SHA-256 of `key` lands in [0, 1): the same on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@main.command()
@click.option("--shipped", required=True, type=click.Path(exists=True, file_okay=False), help="The bundle with the shipped head.")
@click.option("--trained", required=True, type=click.Path(exists=True, file_okay=False), help="The bundle exported from your scorer.")
@click.option("--pairs", "files", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="Preference files; each one's held-out pairs (--split test) are compared. Repeat.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the figures here as JSON (else stdout).")
def compare(shipped: str, trained: str, files: tuple[str, ...], out: str | None) -> None:
    """Each head's held-out accuracy and the paired difference, trained minus shipped, on each file's held-out pairs."""
    bots = {"shipped": replyrank.load_ranker(shipped), "trained": replyrank.load_ranker(trained)}
    result = {"bundles": {"shipped": Path(shipped).name, "trained": Path(trained).name}, "files": {}}
    for path in files:
        test = split_preferences(read_preferences(path))["test"]
        print(f"{Path(path).name}: scoring {len(test)} held-out pairs with each bundle", file=sys.stderr)
        result["files"][Path(path).name] = report = _compare(bots, test)
        votes = _vote_agreement(path, test)
        if votes is not None:
            report["reddit_score"] = votes
    text = json.dumps(result, indent=2)
    if out is None:
        click.echo(text)
    else:
        Path(out).write_text(text + "\n", encoding="utf-8")


def _compare(bots: dict[str, replyrank.Bot], test: list[PreferencePair]) -> dict:
    texts = [(p.prompt, reply) for p in test for reply in (p.chosen, p.rejected)]
    upvotes = {name: np.asarray(bot.score_pairs(texts)[UPVOTES], dtype=float) for name, bot in bots.items()}
    report: dict = {"pairs": len(test), "prompts": len({p.prompt for p in test}), "heads": {}}
    for name, values in upvotes.items():  # eval --pairs's own figures, from the scores already computed
        figures = evaluate_preferences(lambda _texts, v=values: {UPVOTES: v}, test, RESAMPLES)
        report["heads"][name] = {"accuracy": figures["pairwise"][UPVOTES], "interval": figures["intervals"][UPVOTES]}
    report["heads"][LENGTH] = {"accuracy": figures["pairwise"][LENGTH], "interval": figures["intervals"][LENGTH]}
    outcomes = {name: pairwise_outcomes(v[0::2], v[1::2]) for name, v in upvotes.items()}
    difference = outcomes["trained"] - outcomes["shipped"]
    report["paired_difference"] = {
        "trained_minus_shipped": float(difference.mean()),
        "interval_pairs": list(mean_interval(difference, RESAMPLES)),
        "interval_prompts": list(_clustered_interval(difference, [p.prompt for p in test])),
        "only_trained_right": int((difference > 0).sum()), "only_shipped_right": int((difference < 0).sum()),
    }
    report["score_correlation"] = float(np.corrcoef(upvotes["trained"], upvotes["shipped"])[0, 1])
    return report


def _vote_agreement(path: str, test: list[PreferencePair]) -> dict | None:
    """How often the replies' Reddit scores order the held-out pairs as the file does (a tie counts half), where the
    file carries them (`pairs` writes chosen_score, rejected_score): how much of its signal is the crowd's vote."""
    lines = Path(path).read_bytes().split(b"\n")  # PreferencePair.line counts these lines, from 1
    rows = [json.loads(lines[p.line - 1]) for p in test]
    if not all("chosen_score" in row and "rejected_score" in row for row in rows):
        return None
    outcomes = pairwise_outcomes([row["chosen_score"] for row in rows], [row["rejected_score"] for row in rows])
    return {"accuracy": float(outcomes.mean()), "interval": list(mean_interval(outcomes, RESAMPLES))}


def _clustered_interval(values: np.ndarray, prompts: list[str]) -> tuple[float, float]:
    """Bootstrap interval of the mean of `values`, resampling whole prompts (all their pairs together)."""
    index = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
    group = np.array([index[p] for p in prompts])
    sums, counts = np.bincount(group, weights=values), np.bincount(group)
    return bootstrap_interval(lambda chosen: float(sums[chosen].sum() / counts[chosen].sum()), len(index), RESAMPLES)


if __name__ == "__main__":
    main()
