"""Your own preference data: TRL-format JSONL pairs are read (every form TRL names, extra fields ignored, a bad
line named), split by prompt, and measured by `replyrank eval --pairs FILE` against answers known beforehand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import replyrank
from replyrank.cli import main
from replyrank.errors import InputError
from replyrank.preferences import evaluate_preferences, read_preferences, split_preferences
from tiny import CORPUS, REDDIT

COLLEGE = [REDDIT / "college" / "RC_CollegeMajors.zst", REDDIT / "college" / "RS_CollegeMajors.zst"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def hand_made(path: Path) -> Path:
    """Pairs whose every chosen reply is the longer one, with the extra fields a dataset carries."""
    rows = [{"prompt": CORPUS[i], "chosen": CORPUS[i + 1] + " and more besides", "rejected": CORPUS[i + 1][:12], "score": i}
            for i in range(0, 16, 2)]
    return write_jsonl(path, rows)


def test_every_trl_preference_form_reads_as_the_comment_and_two_replies(tmp_path):
    user = [{"role": "user", "content": "how was the exam"}]
    rows = [
        {"prompt": "how was the exam", "chosen": "fine, thanks", "rejected": "no", "id": 7, "source": "mine"},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "fine, thanks"}], "rejected": [{"role": "assistant", "content": "no"}]},
        {"chosen": [*user, {"role": "assistant", "content": "fine, thanks"}], "rejected": [*user, {"role": "assistant", "content": "no"}]},
        "",  # blank lines are skipped
    ]
    pairs = read_preferences(write_jsonl(tmp_path / "pairs.jsonl", rows))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("how was the exam", "fine, thanks", "no")] * 3
    assert [p.line for p in pairs] == [1, 2, 3]


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "chosen": "b"', "line 2: not a JSON object"),
    ('["a", "b", "c"]', "line 2: a JSON list, not an object"),
    ('{"prompt": "a", "chosen": "b"}', "line 2: no 'rejected'"),
    ('{"prompt": "a", "chosen": "b", "rejected": 3}', "line 2: 'rejected' is a int"),
    ('{"prompt": "a", "chosen": "b", "rejected": "  "}', "line 2: 'rejected' is empty"),
    ('{"prompt": "a", "chosen": "b", "rejected": "b"}', "line 2: 'chosen' and 'rejected' are the same text"),
    ('{"chosen": "the sky is blue", "rejected": "the sky is green"}', "line 2: no 'prompt'"),
    ('{"prompt": [], "chosen": "b", "rejected": "c"}', "line 2: 'prompt' is an empty list"),
])
def test_a_bad_line_is_one_error_that_names_it(tmp_path, line, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, line])
    with pytest.raises(InputError, match=message) as error:
        read_preferences(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_the_split_keeps_a_prompts_pairs_together_and_is_the_same_every_time(tmp_path):
    rows = [{"prompt": f"comment {i // 3}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(300)]
    pairs = read_preferences(write_jsonl(tmp_path / "pairs.jsonl", rows))
    split = split_preferences(pairs)
    assert split == split_preferences(pairs)
    assert not {p.prompt for p in split["train"]} & {p.prompt for p in split["test"]}
    assert 0 < len(split["test"]) < len(split["train"]) and len(split["test"]) + len(split["train"]) == 300


def test_accuracy_is_the_share_of_pairs_ordered_as_the_file_orders_them(gpt2_bundle, tmp_path):
    pairs = read_preferences(hand_made(tmp_path / "pairs.jsonl"))
    bot = replyrank.load_ranker(gpt2_bundle)
    report = evaluate_preferences(bot.score_pairs, pairs, resamples=200)
    assert report["pairs"] == 8 and report["pairwise"]["length"] == 1.0  # every chosen reply is the longer
    upvotes = bot.score_pairs([(p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)])["upvotes"]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(upvotes[0::2], upvotes[1::2])) / 8
    assert report["pairwise"]["upvotes"] == pytest.approx(expected)
    low, high = report["intervals"]["upvotes"]
    assert low <= report["pairwise"]["upvotes"] <= high
    # each pair and its mirror: whatever the model, exactly half are ordered as their line says
    mirrored = write_jsonl(tmp_path / "mirrored.jsonl", [
        {"prompt": p.prompt, "chosen": c, "rejected": r} for p in pairs for c, r in ((p.chosen, p.rejected), (p.rejected, p.chosen))
    ])
    both = evaluate_preferences(bot.score_pairs, read_preferences(mirrored), resamples=200)
    assert both["pairwise"] == {"realism": 0.5, "upvotes": 0.5, "length": 0.5}


def test_eval_pairs_prints_each_scores_accuracy_and_keeps_pairs_as_a_count(gpt2_bundle, tmp_path):
    path = hand_made(tmp_path / "pairs.jsonl")
    runner = CliRunner()
    result = runner.invoke(main, ["eval", "--pairs", str(path), "--bundle", str(gpt2_bundle), "--resamples", "100", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs"] == 8 and report["pairwise"]["length"] == 1.0 and set(report["pairwise"]) == {"realism", "upvotes", "length"}
    table = runner.invoke(main, ["eval", "--pairs", str(path), "--bundle", str(gpt2_bundle), "--resamples", "100"])
    assert table.exit_code == 0 and "upvotes" in table.stdout and "length     1.000" in table.stdout
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}, "{oops"])
    refused = runner.invoke(main, ["eval", "--pairs", str(bad), "--bundle", str(gpt2_bundle)])
    assert refused.exit_code == 1 and "line 2" in refused.stderr and "Traceback" not in refused.output
    assert len(refused.stderr.strip().splitlines()) == 1
    neither = runner.invoke(main, ["eval", "--pairs", "nowhere.jsonl", "--bundle", str(gpt2_bundle)])
    assert neither.exit_code == 2 and "neither a number of pairs nor a preference file" in neither.stderr


@pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")
def test_pairs_built_from_reddit_siblings_read_split_and_measure(gpt2_bundle, tmp_path):
    from replyrank.dumps import load_pairs, sibling_pairs

    siblings = sibling_pairs(load_pairs([str(f) for f in COLLEGE]), min_gap=2, within_seconds=None, adjacent=False, max_per_parent=3)
    rows = [{"prompt": s.better.parent, "chosen": s.better.reply, "rejected": s.worse.reply, "gap": s.gap,
             "subreddit": s.better.subreddit} for s in siblings]
    path = write_jsonl(tmp_path / "reddit.jsonl", rows)
    pairs = read_preferences(path)
    assert len(pairs) == len(siblings) > 200
    held_out = split_preferences(pairs)["test"]
    result = CliRunner().invoke(main, ["eval", "--pairs", str(path), "--split", "test", "--bundle", str(gpt2_bundle),
                                       "--resamples", "100", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs"] == len(held_out) and report["split"] == "test"
    assert all(0 <= value <= 1 for value in report["pairwise"].values())


# ---------------------------------------------------------------- training on your own pairs (the build side)

FAST = ["--epochs", "3", "--batch-size", "8", "--learning-rate", "1e-3", "--device", "cpu", "--lora-rank", "0"]


def known_answer(path: Path, start: Path, count: int = 240) -> Path:
    """Pairs of a real sentence and a longer run of one word, preferring whichever of the two the head at `start` scores
    lower on one probe pair: a head that learns the file gets the held-out pairs right, the head it started from
    mostly wrong."""
    from replyrank.export import rankers

    model, tokenizer, _ = rankers.load(start)
    sentence, run = (lambda i: CORPUS[(i + 1) % 8]), (lambda i: "the " * (16 + i % 5))
    _, upvotes = rankers.predict(model, tokenizer, [(CORPUS[0], sentence(0)), (CORPUS[0], run(0))])
    chosen, rejected = (sentence, run) if upvotes[0] < upvotes[1] else (run, sentence)
    rows = [{"prompt": f"{CORPUS[i % 8]} number {i // 2}", "chosen": chosen(i), "rejected": rejected(i), "id": i} for i in range(count)]
    return write_jsonl(path, rows)


@pytest.fixture(scope="module")
def tiny_scorer(models, tmp_path_factory) -> Path:
    """A two-head scorer with untrained heads over the tiny encoder: what `--base` continues from."""
    import torch

    from replyrank.export import rankers

    torch.manual_seed(0)  # the same start whatever ran before
    model, tokenizer = rankers.build_model(str(models["disc"]))
    return rankers.save(model, tokenizer, tmp_path_factory.mktemp("scorer") / "scorer", {"heads": {}, "options": {"max_length": 64}})


def test_train_upvotes_on_pairs_learns_a_known_answer_and_beats_the_head_it_started_from(tiny_scorer, tmp_path):
    path = known_answer(tmp_path / "pairs.jsonl", tiny_scorer)
    result = CliRunner().invoke(main, ["train", "upvotes", "--pairs", str(path), "--base", str(tiny_scorer), "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    held_out = report["evaluation"]["preference_pairs"]
    figures = held_out["pairwise"]["held-out"]
    assert held_out["pairs"]["held-out"] == len(split_preferences(read_preferences(path))["test"]) > 5
    # the untrained head's order of a sentence and a run of one word varies from prompt to prompt, so it is
    # wrong on the pair the file was oriented by and on most others, but not on every one
    assert figures["model"] >= 0.95 and figures["base"] <= 0.5 and figures["length"] in (0.0, 1.0)
    assert report["heads"]["upvotes"]["continued_from"] == str(tiny_scorer) and report["heads"]["upvotes"]["bt_scale"] > 0


def test_a_bad_line_stops_training_with_one_line_naming_it(tiny_scorer, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 3 + ['{"prompt": "a", "chosen": 5, "rejected": "c"}'])
    result = CliRunner().invoke(main, ["train", "upvotes", "--pairs", str(bad), "--base", str(tiny_scorer), "--out", str(tmp_path / "o"), *FAST])
    assert result.exit_code == 1 and "line 4: 'chosen' is a int" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # trains on a few hundred Reddit pairs of full length, exports and evaluates: minutes on two cores
@pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")
def test_reddit_pairs_train_export_and_eval_agree_on_the_held_out_pairs(tiny_scorer, tmp_path):
    from replyrank.dumps import load_pairs, sibling_pairs

    siblings = sibling_pairs(load_pairs([str(f) for f in COLLEGE]), min_gap=2, within_seconds=None, adjacent=False, max_per_parent=3)
    path = write_jsonl(tmp_path / "reddit.jsonl", [{"prompt": s.better.parent, "chosen": s.better.reply, "rejected": s.worse.reply}
                                                  for s in siblings])
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "upvotes", "--pairs", str(path), "--base", str(tiny_scorer), "--out", str(tmp_path / "scorer"),
                                   *FAST])
    assert trained.exit_code == 0, trained.output
    figures = json.loads(trained.stdout)["evaluation"]["preference_pairs"]["pairwise"]["held-out"]
    exported = runner.invoke(main, ["export", "--scorer", str(tmp_path / "scorer"), "--out", str(tmp_path / "bundle"), "--quantize", "none"])
    assert exported.exit_code == 0, exported.output
    measured = runner.invoke(main, ["eval", "--pairs", str(path), "--split", "test", "--bundle", str(tmp_path / "bundle"), "--json"])
    assert measured.exit_code == 0, measured.output
    report = json.loads(measured.stdout)
    # the ONNX graph on the held-out pairs orders them as the PyTorch model did at the end of training
    assert report["pairwise"]["upvotes"] == pytest.approx(figures["model"], abs=0.02)
    assert report["pairwise"]["length"] == pytest.approx(figures["length"])
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert "preference pairs, held-out" in card


def test_train_realism_from_real_and_generated_files(tiny_scorer, tmp_path):
    real = write_jsonl(tmp_path / "real.jsonl", [{"prompt": f"{CORPUS[i % 8]} number {i}", "completion": CORPUS[(i + 1) % 8]} for i in range(160)])
    generated = write_jsonl(tmp_path / "generated.jsonl", [{"prompt": f"{CORPUS[i % 8]} number {i}", "completion": "the " * (3 + i % 7)}
                                                          for i in range(160)])
    result = CliRunner().invoke(main, ["train", "realism", "--scorer", str(tiny_scorer), "--real", str(real), "--generated", str(generated),
                                       "--out", str(tmp_path / "out"), "--epochs", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    realism = json.loads(result.stdout)["realism"]
    assert realism["test_examples"] > 10 and realism["roc_auc"] >= 0.85  # chance is 0.5; a tiny random encoder learns it slowly
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "reply": "b"}])
    refused = CliRunner().invoke(main, ["train", "realism", "--scorer", str(tiny_scorer), "--real", str(bad), "--generated", str(generated),
                                        "--out", str(tmp_path / "o")])
    assert refused.exit_code == 1 and "line 1: no 'completion'" in refused.stderr
