"""`eval --fresh-judge`: the lexical judge on known answers, and the command on a real slice with a tiny bundle."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from tiny import REDDIT

from replyrank.cli import main
from replyrank.dumps import load_pairs, split_by_thread
from replyrank.fresh_judge import Side, judge_report, train_judge

COLLEGE = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]
needs_data = pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")


def real_replies(side: str = "train") -> list[tuple[str, str]]:
    """(thread, text) of real replies of one side of a split by thread, shuffled with a fixed seed."""
    pairs = split_by_thread(load_pairs([str(f) for f in COLLEGE]), valid=0, test=1 / 3, seed=1)[side]
    rows = [(p.thread_id, p.reply) for p in pairs]
    random.Random(0).shuffle(rows)
    return rows


def judged(real_train, generated_train, real_test, generated_test, lexical: bool = True) -> dict:
    judge, threshold = train_judge(real_train, generated_train, lexical)
    test = Side(real=real_test, candidates=generated_test, picks=generated_test[::3])
    return judge_report(judge, threshold, test, resamples=200, seed=0)


@needs_data
def test_the_judge_tells_a_fixed_template_from_real_replies() -> None:
    real, real_test = real_replies()[:300], real_replies("test")
    topics = ["classes", "the major", "your advisor", "the dorm", "financial aid", "that professor"]
    template = [(f"t{i}", f"I think {random.Random(i).choice(topics)} will be fine, good luck!") for i in range(450)]
    report = judged(real, template[:300], real_test, template[300:])
    assert report["roc_auc_real_vs_candidates"] > 0.98 and report["roc_auc_real_vs_picks"] > 0.98
    assert report["picks_taken_for_real"] < 0.05 and report["picks_above_real_median"] < 0.05
    assert 0.75 <= report["real_taken_for_real"] <= 1  # the threshold takes ~90% of training real replies


@needs_data
def test_the_judge_cannot_tell_two_halves_of_the_same_replies() -> None:
    train, test = real_replies(), real_replies("test")  # one distribution, on threads apart, labelled two ways at random
    for lexical in (True, False):
        report = judged(train[:300:2], train[1:300:2], test[::2], test[1::2], lexical)
        low, high = report["roc_auc_real_vs_candidates_interval"]
        assert 0.4 < report["roc_auc_real_vs_candidates"] < 0.6 and low < 0.5 < high


@needs_data
def test_eval_fresh_judge_on_a_real_slice(gpt2_bundle) -> None:
    runner = CliRunner()
    args = ["eval", "--bundle", str(gpt2_bundle), "--data", str(COLLEGE[0]), str(COLLEGE[1]), "--pairs", "10",
            "--realism-comments", "0", "--relevance-sets", "0", "--resamples", "50", "--fresh-judge", "--fresh-judge-comments", "12"]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    judge = json.loads(result.stdout)["fresh_judge"]
    assert judge["comments"] == {"train": 8, "test": 4}
    counts = judge["counts"]
    assert counts["train"]["real"] == counts["train"]["candidates"] > 0  # as many real rows as generated ones
    assert counts["test"]["candidates"] > 0 and 0 < counts["test"]["picks"] <= 4 and counts["test"]["real"] > 50
    for name in ("lexical", "length"):
        figures = judge[name]
        for key in ("roc_auc_real_vs_candidates", "roc_auc_real_vs_picks", "picks_taken_for_real", "candidates_taken_for_real",
                    "real_taken_for_real", "picks_above_real_median"):
            low, high = figures[f"{key}_interval"]
            assert 0 <= low <= figures[key] <= high <= 1, (name, key)
    assert judge["seconds"]["writing"] > 0 and "90%" in judge["threshold_rule"]
    table = runner.invoke(main, args)
    assert table.exit_code == 0 and "fresh judge: trained on" in table.stdout and "length alone" in table.stdout


def test_fresh_judge_without_scikit_learn_names_the_install(gpt2_bundle, monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "sklearn", None)  # as if it were not installed
    result = CliRunner().invoke(main, ["eval", "--bundle", str(gpt2_bundle), "--data", str(tmp_path / "RC_x.zst"), "--fresh-judge"])
    assert result.exit_code == 1 and "pip install scikit-learn" in result.output and "Traceback" not in result.output
