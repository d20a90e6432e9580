"""`replyrank eval` and the protocol behind it: a toy case computed by hand, a real slice with a tiny bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tiny import REDDIT

from replyrank.cli import main
from replyrank.dumps import Pair
from replyrank.evaluate import EvalOptions, draw_comparisons, evaluate

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


def test_groups_need_three_siblings_within_the_hour_and_a_unique_best() -> None:
    tie = [reply("a", 5, 0, "x", "t3_q"), reply("b", 5, 10, "y", "t3_q"), reply("c", 1, 20, "z", "t3_q")]
    late = [reply("d", 5, 0, "x", "t3_r"), reply("e", 1, 10, "y", "t3_r"), reply("f", 9, 7200, "z", "t3_r")]
    assert draw_comparisons(tie + late).groups == []


@pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")
def test_eval_cli_on_a_real_slice(gpt2_bundle) -> None:
    runner = CliRunner()
    args = ["eval", "--bundle", str(gpt2_bundle), "--data", str(COLLEGE[0]), "--data", str(COLLEGE[1]), "--pairs", "15",
            "--realism-comments", "3"]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    upvotes = report["upvotes"]
    assert upvotes["pairs"]["gap>=1"] == 15 and set(upvotes["pairwise"]["gap>=1"]) == {"model", "time", "length"}
    assert all(0 <= a <= 1 for row in upvotes["pairwise"].values() for a in row.values())
    if "hits_at_1" in upvotes:  # this slice may hold no parent with three replies within the hour
        assert 0 < upvotes["hits_at_1"]["chance"] < 1 and upvotes["groups"] > 0
    realism = report["realism"]
    assert realism["comments"] == 3 and realism["candidates"] > 0 and 0 <= realism["roc_auc_real_vs_candidates"] <= 1
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "gap>=5" in table.stdout and "realism: ROC-AUC" in table.stdout


def test_eval_refuses_a_file_that_is_not_a_dump(gpt2_bundle, tmp_path) -> None:
    bad = tmp_path / "RC_notes.zst"
    bad.write_bytes(b"this is not zstd")
    result = CliRunner().invoke(main, ["eval", "--bundle", str(gpt2_bundle), "--data", str(bad), "--json"])
    assert result.exit_code == 1 and "not a zstd dump" in result.output and "Traceback" not in result.output
