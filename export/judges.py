"""The judges' training and evaluation data: Reddit dumps in, a compact kit for one GPU run out.

One MiniLM encoder gets three heads (`export/train_judges.py` trains them on a GPU):

- upvotes: DialogRPT's sibling pairs (neighbours in time, within an hour, score gap >= 3) and SHP's
  time-debiased pairs (Ethayarajh et al., 2022: the later top-level reply with twice the score),
  each with a certainty weight from its score ratio (`certainty`), so a 48-vs-45 pair, whose order
  a few votes could flip, teaches less than a 40-vs-2 pair;
- relevance: DialogRPT's human-vs-random: a comment's real reply against real replies to other
  threads of the same subreddit and of similar length (`replyrank.evaluate.relevance_sets`), so
  neither topic-free style nor length gives the answer away;
- realism: real replies against replies that several generators write to the same comments (the
  GPU run samples them; the kit holds the comments and their real replies).

Everything is split by thread (`replyrank.dumps.split_by_thread`, as the upvote head was): training
threads train, validation threads pick nothing but are reported, and the held-out subreddits'
threads only ever appear in `eval_*` files. Texts are normalised as the scorer reads them (DialogRPT's
`normalize_text`) and cut to `MAX_CHARS`, past which a 128-token pair cannot reach anyway.
"""

from __future__ import annotations

import json
import lzma
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from replyrank.dumps import Filters, Pair, SiblingPair, load_pairs, sibling_pairs, split_by_thread
from replyrank.evaluate import EvalOptions, draw_comparisons, relevance_sets, relevance_texts, shp_pairs, submission_scores
from replyrank.filters import normalize_text

MAX_CHARS = 700


@dataclass(frozen=True)
class Source:
    """One generator setting whose replies the realism head learns to tell from real ones."""

    name: str
    adapter: str | None  # folder of a LoRA adapter over SmolLM2-135M-Instruct; None: the untuned model
    prompt: str  # "chat": the model's own chat template; "plain": the comment and "Reply:"; "bundle": the bundle's system prompt
    temperature: float
    top_k: int
    top_p: float


# Several generators and sampling settings, so the head judges machine text in general, not one
# generator's. `dpo-b` (an adversarial DPO run's adapter) is held out of training: the head's AUC
# against it is the "never seen" figure of issue #31.
SOURCES = (
    Source("base-chat-t0.7", None, "chat", 0.7, 50, 0.95),
    Source("base-chat-t1.0", None, "chat", 1.0, 0, 0.9),
    Source("base-plain-t0.8", None, "plain", 0.8, 40, 1.0),
    Source("base-plain-t1.0", None, "plain", 1.0, 0, 0.95),
    Source("shipped-t0.7", "export/weights/reddit-generator", "bundle", 0.7, 50, 1.0),
    Source("shipped-t1.0", "export/weights/reddit-generator", "bundle", 1.0, 0, 0.9),
)
HELD_OUT_SOURCES = (Source("dpo-b-t0.9", ".judges/kit/dpo_adapter", "bundle", 0.9, 50, 0.95),)


def certainty(better: int, worse: int) -> float:
    """How sure a pair's order is, from its scores: log2 of the ratio of (score + 1)s, capped at 1.

    Twice the score (SHP's rule) or more counts fully; 48 against 45 counts 0.09. Scores below 0
    count as 0, so a downvoted reply is as far below as an unvoted one.
    """
    return min(1.0, max(0.05, math.log2((max(better, 0) + 1) / (max(worse, 0) + 1))))


def load_split(files: Sequence[str | Path], seed: int = 0) -> dict[str, list[Pair]]:
    """(parent, reply) pairs of `files`, normalised and cut as the scorer reads them, split by thread."""
    pairs = []
    for pair in load_pairs(files, Filters(max_chars=100_000)):
        parent, reply = normalize_text(pair.parent)[:MAX_CHARS], normalize_text(pair.reply)[:MAX_CHARS]
        if parent and reply:
            pairs.append(replace(pair, parent=parent, reply=reply))
    return split_by_thread(pairs, valid=0.05, test=0.1, seed=seed)


def upvote_pairs(pairs: Sequence[Pair], post_scores: dict[str, int], seed: int = 0) -> list[tuple[SiblingPair, str, float]]:
    """(pair, protocol, certainty) for every DialogRPT sibling pair (gap >= 3, as the shipped head) and SHP pair of `pairs`."""
    found = [(p, "dialogrpt", certainty(p.better.score, p.worse.score)) for p in sibling_pairs(pairs, 3600, 3, seed=seed)]
    seen = {(p.better.reply_id, p.worse.reply_id) for p, _, _ in found}
    found += [(p, "shp", certainty(p.better.score, p.worse.score)) for p in shp_pairs(pairs, post_scores, seed=seed)
              if (p.better.reply_id, p.worse.reply_id) not in seen]
    return found


class TextTable:
    """Each distinct text once, by number: the kit's pairs refer to texts by index, which keeps it small."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        return self.index.setdefault(text, len(self.index))

    def texts(self) -> list[str]:
        return list(self.index)


def write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    """Rows as JSON lines, xz-compressed (the standard library reads it on any machine)."""
    count = 0
    with lzma.open(path, "wt", encoding="utf-8", preset=6) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[Any]:
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def realism_prompts(pairs: Sequence[Pair], count: int, seed: int) -> list[Pair]:
    """`count` comments with one real reply each (a comment once), drawn at random."""
    by_parent: dict[str, Pair] = {}
    for pair in random.Random(seed).sample(list(pairs), len(pairs)):
        by_parent.setdefault(pair.parent_id, pair)
    return list(by_parent.values())[:count]


def build_kit(
    train_files: Sequence[str], heldout_files: Sequence[str], out: str | Path, relevance_anchors: int = 60_000,
    realism_comments: int = 3000, eval_options: EvalOptions = EvalOptions(relevance_sets=1000), eval_realism_comments: int = 600,
    seed: int = 0, sources: Sequence[Source] = SOURCES, held_out_sources: Sequence[Source] = HELD_OUT_SOURCES,
) -> dict[str, Any]:
    """Write the kit to `out`: every text once (`texts`), and the rows below, which refer to texts by index.

    - upvote_pairs: [parent, better, worse, protocol, certainty, split] of the training subreddits' train and valid threads;
    - relevance_sets: [parent, real reply, 3 distractors, split], `relevance_anchors` of the train threads (fewer for valid);
    - realism_prompts: [parent, real reply, split] per comment, `realism_comments` for each training source,
      train and valid, and `eval_realism_comments` of the held-out subreddits ("eval");
    - eval_pairs: [parent, reply] of every held-out comparison (`heldout_comparisons`, which draws them again from
      the same dumps to read the scores brought back, by text).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = TextTable()
    split = load_split(train_files, seed)
    posts = submission_scores(train_files)
    upvotes, relevance, prompts = [], [], []
    for name in ("train", "valid"):
        for pair, protocol, weight in upvote_pairs(split[name], posts, seed):
            upvotes.append([table(pair.better.parent), table(pair.better.reply), table(pair.worse.reply), protocol, round(weight, 3), name])
        anchors = relevance_anchors if name == "train" else relevance_anchors // 10
        for group in relevance_sets(split[name], anchors, distractors=3, seed=seed):
            relevance.append([table(group[0].parent)] + [table(p.reply) for p in group] + [name])
        wanted = realism_comments * len(sources) if name == "train" else realism_comments // 5 * len(sources)
        prompts += [[table(p.parent), table(p.reply), name] for p in realism_prompts(split[name], wanted, seed)]
    heldout = load_split(heldout_files, seed)
    everything = heldout["train"] + heldout["valid"] + heldout["test"]
    evaluation = heldout_comparisons(everything, submission_scores(heldout_files), eval_options)
    eval_pairs = TextTable()  # (parent, reply) keys: a held-out pair's index into the scores brought back
    for pair in evaluation["test"].replies():
        eval_pairs(_key(pair))
    for key in relevance_texts(evaluation["relevance"]):
        eval_pairs(json.dumps(list(key), ensure_ascii=False))
    for pair in realism_prompts(everything, eval_realism_comments, seed):
        prompts.append([table(pair.parent), table(pair.reply), "eval"])
    counts = {
        "texts": write_jsonl(out / "texts.jsonl.xz", table.texts()),
        "upvote_pairs": write_jsonl(out / "upvote_pairs.jsonl.xz", upvotes),
        "relevance_sets": write_jsonl(out / "relevance_sets.jsonl.xz", relevance),
        "realism_prompts": write_jsonl(out / "realism_prompts.jsonl.xz", prompts),
        "eval_pairs": write_jsonl(out / "eval_pairs.jsonl.xz", [json.loads(key) for key in eval_pairs.texts()]),
    }
    manifest = {"train_files": [Path(f).name for f in train_files], "heldout_files": [Path(f).name for f in heldout_files],
                "counts": counts, "seed": seed, "eval_options": asdict(eval_options), "max_chars": MAX_CHARS,
                "sources": [asdict(s) for s in sources], "held_out_sources": [asdict(s) for s in held_out_sources]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def heldout_comparisons(pairs: Sequence[Pair], post_scores: dict[str, int], options: EvalOptions) -> dict[str, Any]:
    """The held-out subreddits' comparisons: `replyrank eval`'s protocols and its relevance sets, drawn the same way."""
    return {"test": draw_comparisons(pairs, options, post_scores),
            "relevance": relevance_sets(pairs, options.relevance_sets, options.distractors, options.seed)}


def _key(pair: Pair) -> str:
    return json.dumps([pair.parent, pair.reply], ensure_ascii=False)


def evaluate_judges(kit: str | Path, heldout_files: Sequence[str], runs: dict[str, Path], machine: str | Path, resamples: int = 1000) -> dict[str, Any]:
    """The held-out figures of each trained recipe (name -> its scores `.npz`), from what the GPU run brought back.

    The comparisons are drawn again from `heldout_files` exactly as the kit drew them, and each pair's
    scores are found by its text; the figures come from `replyrank.evaluate` and `replyrank.metrics`, as
    `replyrank eval` computes them. Realism: ROC-AUC of the held-out comments' real replies against each
    source's replies to the same comments (`machine`), the untuned model's together, and the training sources' together.
    """
    import numpy as np

    kit = Path(kit)
    manifest = json.loads((kit / "manifest.json").read_text())
    options = EvalOptions(**manifest["eval_options"])
    heldout = load_split(heldout_files, manifest["seed"])
    everything = heldout["train"] + heldout["valid"] + heldout["test"]
    evaluation = heldout_comparisons(everything, submission_scores(heldout_files), options)
    index = {json.dumps(pair, ensure_ascii=False): i for i, pair in enumerate(read_jsonl(kit / "eval_pairs.jsonl.xz"))}
    real_count = sum(1 for *_, split in read_jsonl(kit / "realism_prompts.jsonl.xz") if split == "eval")
    sources = [row["source"] for row in read_jsonl(Path(machine))]
    held_out = {s["name"] for s in manifest["held_out_sources"]}
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(sources):
        groups.setdefault(name, []).append(i)
    groups["untuned (base-*)"] = [i for i, name in enumerate(sources) if name.startswith("base-")]
    groups["training sources"] = [i for i, name in enumerate(sources) if name not in held_out]
    reports = {}
    for name, path in runs.items():
        arrays = np.load(path)
        reports[name] = _figures(evaluation, index, arrays["eval_pairs"].astype(np.float64), arrays["realism"].astype(np.float64), real_count,
                                 groups, held_out, resamples, options.seed)
    return reports


def _figures(evaluation: dict[str, Any], index: dict[str, int], table, realism, real_count: int, groups: dict[str, list[int]],
             held_out: set[str], resamples: int, seed: int) -> dict[str, Any]:
    import numpy as np

    from replyrank.evaluate import evaluate, evaluate_relevance
    from replyrank.metrics import roc_auc, roc_auc_interval

    def column(number: int):
        return lambda texts: np.array([table[index[json.dumps(list(t), ensure_ascii=False)], number] for t in texts])

    report: dict[str, Any] = {"upvotes": evaluate(evaluation["test"], column(2), resamples, seed)}
    texts = relevance_texts(evaluation["relevance"])
    report["relevance"] = evaluate_relevance(evaluation["relevance"], {name: column(n)(texts) for n, name in enumerate(("realism", "relevance", "upvotes"))},
                                             resamples, seed)
    real, fake = realism[:real_count], realism[real_count:]
    report["realism"] = {"real_replies": real_count, "real_kept_at_0.5": float(np.mean(real >= 0.5)), "sources": {}}
    for name, rows in groups.items():
        labels, probs = [1] * len(real) + [0] * len(rows), np.concatenate([real, fake[rows]])
        report["realism"]["sources"][name] = {"replies": len(rows), "roc_auc": roc_auc(labels, probs), "interval": list(roc_auc_interval(labels, probs, resamples)),
                                              "taken_for_real_at_0.5": float(np.mean(fake[rows] >= 0.5)), "held_out": name in held_out}
    return report


def main() -> None:
    """`python -m replyrank.export.judges OUT`: the kit from the college dumps (four subreddits train, two held out)."""
    import sys

    college = Path(__file__).resolve().parents[2] / "shared" / "data" / "reddit" / "college"
    train = [str(college / f"{kind}_{name}.zst") for name in ("ApplyingToCollege", "College", "CollegeMajors", "CollegeAdvice") for kind in ("RS", "RC")]
    heldout = [str(college / f"{kind}_{name}.zst") for name in ("GradSchool", "CollegeRant") for kind in ("RS", "RC")]
    print(json.dumps(build_kit(train, heldout, sys.argv[1]), indent=2))


if __name__ == "__main__":
    main()
