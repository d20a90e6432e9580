"""Does the judges' cross-encoder relevance head add to the relevance bi-encoder? Issue #31's next step, measured.

The shipped bi-encoder (`export/weights/reddit-relevance`) scores a reply by the cosine of two embeddings; the judges'
encoder (`export/weights/reddit-judges`) also has a relevance head that reads comment and reply together, trained
beside the realism and upvote heads but not exported. Both are scored here on the held-out relevance sets (GradSchool
and CollegeRant, 1,000 sets of 10: the real reply first, 9 replies to other threads), and combined per set as the
sum of their z-scores (each score standardised over the set's 10 replies), at a few weights of the head. The paired
difference against the bi-encoder alone comes with a bootstrap 95% interval over sets.

    python benchmarks/relevance_ensemble.py --pack .judges/relevance/pack --run .judges/relevance/run \\
        --base .judges/minilm --out benchmarks/results/relevance_ensemble.json

PACK and RUN are what `export/relevance_data.py pack` and `export/train_relevance.py train` wrote (the held-out sets,
their texts, and the bi-encoder's cosines on them); BASE is all-MiniLM-L6-v2. Scoring 10,000 pairs with the PyTorch
judge takes a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (0.25, 0.5, 1.0)


def hits(scores: np.ndarray) -> np.ndarray:
    """Per set: 1 when the real reply (first) scores highest, shared when tied."""
    top = scores.max(axis=1, keepdims=True)
    return (scores[:, 0] == top[:, 0]) / (scores == top).sum(axis=1)


def standardised(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean(axis=1, keepdims=True)) / (scores.std(axis=1, keepdims=True) + 1e-9)


def interval(values: np.ndarray, resamples: int = 1000) -> list[float]:
    rng = np.random.default_rng(0)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(resamples)]
    return [round(float(v), 3) for v in np.percentile(means, [2.5, 97.5])]


def judge_scores(pack: Path, base: str, sets: np.ndarray) -> np.ndarray:
    """The judges' relevance logit of every (comment, reply) of `sets`, shaped like them."""
    os.environ.setdefault("JUDGES_DEVICE", "cpu")
    from replyrank.export.train_judges import load_judge, score

    with lzma.open(pack / "texts.jsonl.xz", "rt", encoding="utf-8") as lines:
        texts = [json.loads(line) for line in lines]
    model, tokenizer = load_judge(ROOT / "export" / "weights" / "reddit-judges", base)
    pairs = [(int(c), int(r)) for c, r in sets.reshape(-1, 2)]
    return score(model, tokenizer, texts, pairs, batch=64)[:, 1].reshape(sets.shape[:2])


@click.command()
@click.option("--pack", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--base", required=True, help="all-MiniLM-L6-v2 folder")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def main(pack: Path, run_dir: Path, base: str, out: Path) -> None:
    started = time.time()
    sets = np.load(pack / "data.npz")["heldout_sets"]
    cosines = np.load(run_dir / "cosines.npz")
    bi, untrained = cosines["heldout_trained"], cosines["heldout_untrained"]
    head = judge_scores(pack, base, sets)
    alone = hits(bi)
    result = {"sets": len(sets), "hits_at_1": {"bi-encoder": round(float(alone.mean()), 3), "untrained cosine": round(float(hits(untrained).mean()), 3),
                                               "cross-encoder head": round(float(hits(head).mean()), 3)},
              "bi-encoder + w * head (z-scores per set)": {}}
    for weight in WEIGHTS:
        combined = hits(standardised(bi) + weight * standardised(head))
        result["bi-encoder + w * head (z-scores per set)"][str(weight)] = {
            "hits_at_1": round(float(combined.mean()), 3), "ci95": interval(combined),
            "difference": round(float((combined - alone).mean()), 3), "difference_ci95": interval(combined - alone)}
    from replyrank.environment import cpu_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=cpu_model(), commit=commit,
                  seconds=round(time.time() - started), command=" ".join(["python benchmarks/relevance_ensemble.py", *sys.argv[1:]]))
    out.write_text(json.dumps(result, indent=1) + "\n")
    click.echo(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
