"""`replyrank eval` and the protocol behind it: a toy case computed by hand, a real slice with a tiny bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tiny import REDDIT

from replyrank.cli import main
from replyrank.dumps import Pair
from replyrank.evaluate import (
    EvalOptions, ShpRule, draw_comparisons, evaluate, evaluate_relevance, relevance_sets, relevance_texts, shp_pairs,
    submission_scores,
)

COLLEGE = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]


def reply(reply_id: str, score: int, created: int, text: str, parent: str = "t3_p") -> Pair:
    return Pair("What should I study?", text, score, parent, "s", created, reply_id, parent)


def test_toy_case_by_hand() -> None:
    # one parent, four replies in time order a b c d (one minute apart); scores 30, 2, 8, 1
    thread = [reply("a", 30, 0, "short"), reply("b", 2, 60, "a much longer reply here"), reply("c", 8, 120, "mid reply"),
              reply("d", 1, 180, "x")]
    test = draw_comparisons(thread, EvalOptions(random_replies=4))
    # neighbours: a-b (gap 28), b-c (6), c-d (7); ranks of scores 1 2 8 30: a 1, b 1/3, c 2/3, d 0
    assert {name: len(pairs) for name, pairs in test.pairs.items()} == {"gap>=1": 3, "gap>=5": 3, "gap>=20": 1, "dialogrpt": 1}
    assert len(test.groups) == 1 and len(test.random_replies) == 4
    model = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.0}  # right on c-d only; wrong on a-b, b-c
    report = evaluate(test, lambda pairs: [model[{p.reply: p.reply_id for p in thread}[r]] for _, r in pairs])
    assert report["pairwise"]["gap>=1"]["model"] == pytest.approx(1 / 3)
    assert report["pairwise"]["gap>=1"]["time"] == pytest.approx(2 / 3)  # earlier wins: a-b and c-d right
    assert report["pairwise"]["gap>=1"]["length"] == pytest.approx(1 / 3)  # longer wins: only c-d right
    assert report["pairwise"]["gap>=20"] == {"model": 0.0, "time": 1.0, "length": 0.0}
    # Spearman of model (0.1, 0.9, 0.5, 0) vs scores (30, 2, 8, 1): ranks (2,4,3,1) vs (4,2,3,1) -> 1 - 6*8/60 = 0.2
    assert report["spearman"]["model"] == pytest.approx(0.2)
    assert report["hits_at_1"] == {"model": 0.0, "time": 1.0, "length": 0.0, "chance": 0.25}
    # on the same three gap>=1 pairs the model is right on c-d only, length likewise, time on a-b and c-d
    assert report["margins"]["gap>=1"]["model-length"]["value"] == pytest.approx(0.0)
    assert report["margins"]["gap>=1"]["model-time"]["value"] == pytest.approx(-1 / 3)
    assert report["intervals"]["pairwise"]["gap>=20"]["time"] == [1.0, 1.0]  # one pair: nothing to resample
    low, high = report["intervals"]["pairwise"]["gap>=1"]["model"]
    assert 0 <= low <= 1 / 3 <= high <= 1


def test_shp_pairs_prefer_the_later_reply_with_twice_the_score() -> None:
    post = [reply("a", 4, 0, "first"), reply("b", 9, 60, "second"), reply("c", 3, 120, "third"), reply("d", 40, 180, "fourth"),
            reply("e", 1, 240, "fifth")]
    # later >= 2x earlier, both >= 2: b over a (9 >= 8), d over a, d over b, d over c; c is below 2x anyone before it,
    # e scores under 2, and nothing beats a later reply by being earlier
    found = shp_pairs(post, {"t3_p": 10})
    assert sorted((p.better.reply_id, p.worse.reply_id) for p in found) == [("b", "a"), ("d", "a"), ("d", "b"), ("d", "c")]
    assert shp_pairs(post, {"t3_p": 9}) == []  # the post itself scored under 10
    assert len(shp_pairs(post, {"t3_p": 10}, ShpRule(max_per_post=2))) == 2
    comments = [reply(r.reply_id, r.score, r.created_utc, r.reply, "t1_x") for r in post]
    assert shp_pairs(comments, {"t3_p": 10, "t1_x": 10}) == []  # only top-level replies to a post


def test_the_time_baseline_loses_every_shp_pair() -> None:
    post = [reply("a", 4, 0, "first"), reply("b", 9, 60, "second")]
    test = draw_comparisons(post, EvalOptions(random_replies=0), {"t3_p": 50})
    report = evaluate(test, lambda pairs: [len(r) for _, r in pairs])
    assert report["pairwise"]["shp"] == {"model": 1.0, "time": 0.0, "length": 1.0}
    assert report["margins"]["shp"]["model-time"]["value"] == 1.0


def subreddit_replies(count: int) -> list[Pair]:
    return [Pair(f"question {i}", f"answer number {i:03d}", 1, f"thread{i}", "s", i, f"r{i}", f"t3_{i}") for i in range(count)]


def test_relevance_sets_hold_the_real_reply_first_and_replies_from_other_threads() -> None:
    sets = relevance_sets(subreddit_replies(30), count=5, distractors=9, seed=1)
    assert len(sets) == 5 and all(len(group) == 10 for group in sets)
    for real, *others in sets:
        assert all(o.parent == real.parent and o.thread_id != real.thread_id and o.reply != real.reply for o in others)
    assert relevance_sets(subreddit_replies(5), count=5) == []  # too few other threads to draw 9 from


def test_relevance_hits_at_1_by_hand() -> None:
    sets = relevance_sets(subreddit_replies(30), count=4, distractors=2, seed=0)
    texts = relevance_texts(sets)
    right = [1.0 if i % 3 == 0 else 0.0 for i in range(len(texts))]  # the real reply (first of each set) on top
    flat = [0.5] * len(texts)  # a three-way tie in every set: a third of a hit each
    report = evaluate_relevance(sets, {"right": right, "flat": flat})
    assert report["hits_at_1"] == {"right": 1.0, "flat": pytest.approx(1 / 3)} and report["chance"] == pytest.approx(1 / 3)
    assert report["intervals"]["right"] == [1.0, 1.0]


@pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")
def test_submission_scores_come_from_the_submission_dump() -> None:
    scores = submission_scores([str(COLLEGE[1])])
    assert scores and all(name.startswith("t3_") for name in scores) and max(scores.values()) >= 10
    assert submission_scores([str(COLLEGE[0])]) == {}  # a comment dump is not read


def test_groups_need_three_siblings_within_the_hour_and_a_unique_best() -> None:
    tie = [reply("a", 5, 0, "x", "t3_q"), reply("b", 5, 10, "y", "t3_q"), reply("c", 1, 20, "z", "t3_q")]
    late = [reply("d", 5, 0, "x", "t3_r"), reply("e", 1, 10, "y", "t3_r"), reply("f", 9, 7200, "z", "t3_r")]
    assert draw_comparisons(tie + late).groups == []


@pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")
def test_eval_cli_on_a_real_slice(gpt2_bundle) -> None:
    runner = CliRunner()
    # both dumps after one --data, as users type them
    args = ["eval", "--bundle", str(gpt2_bundle), "--data", str(COLLEGE[0]), str(COLLEGE[1]), "--pairs", "15",
            "--realism-comments", "3", "--relevance-sets", "20", "--resamples", "50"]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    upvotes = report["upvotes"]
    assert upvotes["pairs"]["gap>=1"] == 15 and set(upvotes["pairwise"]["gap>=1"]) == {"model", "time", "length"}
    assert "shp" in upvotes["pairs"] and upvotes["pairs_requested"] == 15
    low, high = upvotes["intervals"]["pairwise"]["gap>=1"]["model"]
    assert low <= upvotes["pairwise"]["gap>=1"]["model"] <= high
    relevance = report["relevance"]
    assert relevance["sets"] == 20 and relevance["chance"] == pytest.approx(0.1)
    assert set(relevance["hits_at_1"]) == {"realism", "upvotes"}
    assert all(0 <= a <= 1 for row in upvotes["pairwise"].values() for a in row.values())
    if "hits_at_1" in upvotes:  # this slice may hold no parent with three replies within the hour
        assert 0 < upvotes["hits_at_1"]["chance"] < 1 and upvotes["groups"] > 0
    realism = report["realism"]
    assert realism["comments"] == 3 and realism["candidates"] > 0 and 0 <= realism["roc_auc_real_vs_candidates"] <= 1
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "gap>=5" in table.stdout and "realism: ROC-AUC" in table.stdout
    assert "relevance: hits@1" in table.stdout and "model-length" in table.stdout


def test_eval_without_data_says_how_to_give_it(gpt2_bundle) -> None:
    result = CliRunner().invoke(main, ["eval", "--bundle", str(gpt2_bundle)])
    assert result.exit_code == 2 and "--data" in result.output and "Traceback" not in result.output


def test_eval_refuses_a_file_that_is_not_a_dump(gpt2_bundle, tmp_path) -> None:
    bad = tmp_path / "RC_notes.zst"
    bad.write_bytes(b"this is not zstd")
    result = CliRunner().invoke(main, ["eval", "--bundle", str(gpt2_bundle), "--data", str(bad), "--json"])
    assert result.exit_code == 1 and "not a zstd dump" in result.output and "Traceback" not in result.output
