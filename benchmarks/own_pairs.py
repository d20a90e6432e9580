"""Does `replyrank train upvotes --pairs FILE` beat the shipped head on the held-out pairs of FILE? Issue #33's measure.

Two steps, around the commands a user runs (`train upvotes --pairs`, `export --scorer`):

- `pairs` writes a preference file (TRL's prompt, chosen, rejected; extra fields: subreddit, thread, scores) of
  the sibling pairs of Pushshift dumps, by the project's own code: `recipes.load_reddit` (DialogRPT's text
  normalisation, every thread) and `dumps.sibling_pairs` with the shipped head's selection
  (`recipes.PairSelection`: neighbours within the hour, score gap >= 3). `--share` keeps the pairs of that
  share of the threads (a SHA-256 of the thread id, independent of the prompt split): a smaller file of the
  same audience, whose held-out prompts are among the whole file's.
- `compare` scores the held-out pairs of each file (`--split test`, what `replyrank eval --pairs FILE --split
  test` measures) with two bundles through the public API (`replyrank.load_ranker(...).score_pairs`), and
  reports each upvote head's pairwise accuracy with `eval`'s bootstrap interval, length's, and the PAIRED
  difference (trained minus shipped, per pair), with an interval that resamples pairs (as `eval` does) and
  one that resamples prompts (the pairs of one comment are not independent): the claim holds only where
  the difference's interval is above 0.

    D=../shared/data/reddit/college
    python benchmarks/own_pairs.py pairs --out gradschool.jsonl $D/RS_GradSchool.zst $D/RC_GradSchool.zst
    python benchmarks/own_pairs.py pairs --share 0.4 --out gradschool-5k.jsonl $D/RS_GradSchool.zst $D/RC_GradSchool.zst
    python benchmarks/own_pairs.py compare --shipped SHIPPED_BUNDLE --trained MY_BUNDLE \\
        --pairs gradschool-5k.jsonl --pairs gradschool.jsonl --out benchmarks/results/own_pairs.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

import click
import numpy as np

import replyrank
from replyrank.dumps import sibling_pairs
from replyrank.metrics import bootstrap_interval, mean_interval, pairwise_outcomes
from replyrank.preferences import LENGTH, PreferencePair, evaluate_preferences, held_out, read_preferences, split_preferences

RESAMPLES = 1000  # eval's
UPVOTES = "upvotes"


@click.group()
def main() -> None:
    """Issue #33: your own preference pairs against the shipped upvote head."""


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The preference file to write (JSONL).")
@click.option("--share", type=float, default=1.0, show_default=True, help="Keep the pairs of this share of the threads.")
def pairs(files: tuple[str, ...], out: str, share: float) -> None:
    """Write the sibling pairs of FILES (RS_ and RC_ dumps) as a preference file."""
    from replyrank.export.recipes import PairSelection, load_reddit

    selection = PairSelection()
    split = load_reddit(files)
    rows = split["train"] + split["valid"] + split["test"]
    found = sibling_pairs(rows, selection.within_seconds, selection.min_gap, adjacent=selection.adjacent)
    counts: Counter[str] = Counter()
    with open(out, "w", encoding="utf-8") as f:
        for p in found:
            if p.better.reply == p.worse.reply:
                counts["identical_replies_left_out"] += 1  # a preference file cannot prefer a text to itself
                continue
            if _position(f"subset:{p.better.thread_id}") >= share:
                continue
            f.write(json.dumps({"prompt": p.better.parent, "chosen": p.better.reply, "rejected": p.worse.reply,
                                "subreddit": p.better.subreddit, "thread": p.better.thread_id,
                                "chosen_score": p.better.score, "rejected_score": p.worse.score}) + "\n")
            counts["test" if held_out(p.better.parent) else "train"] += 1
    click.echo(json.dumps({"files": [Path(f).name for f in files], "replies": len(rows), "sibling_pairs": len(found),
                           "share": share, "written": counts["train"] + counts["test"], **counts}))


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
        result["files"][Path(path).name] = _compare(bots, test)
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


def _clustered_interval(values: np.ndarray, prompts: list[str]) -> tuple[float, float]:
    """Bootstrap interval of the mean of `values`, resampling whole prompts (all their pairs together)."""
    index = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
    group = np.array([index[p] for p in prompts])
    sums, counts = np.bincount(group, weights=values), np.bincount(group)
    return bootstrap_interval(lambda chosen: float(sums[chosen].sum() / counts[chosen].sum()), len(index), RESAMPLES)


if __name__ == "__main__":
    main()
