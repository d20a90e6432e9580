"""The relevance scorer: a text embedder exported beside the pair scorers, whose calibrated cosine of comment and reply
says whether a reply answers *this* comment; selection multiplies it in, and every output shows it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner

import replyrank
from replyrank.bot import RESULT_SCHEMA
from replyrank.bundle import MANIFEST, Bundle
from replyrank.cli import main
from replyrank.errors import BundleError
from tiny import PAIRS, REDDIT, build_relevance

COMMENT = "has anyone tried the pasta place near campus"
REPLIES = ["yes it was fine but a bit expensive for students", "no idea, ask the front desk", "i think it is great"]
SCALE, OFFSET = 8.0, -4.0
# real pairs to check the export on, whether or not chitchat-dataset is installed
VALIDATION = [arg for dump in ("RC_CollegeAdvice.zst", "RS_CollegeAdvice.zst") for arg in ("--validation-data", str(REDDIT / "college" / dump))]


@pytest.fixture(scope="module")
def relevance_model(tmp_path_factory) -> Path:
    return build_relevance(tmp_path_factory.mktemp("relevance") / "model", SCALE, OFFSET)


@pytest.fixture(scope="module")
def relevance_bundle(models, relevance_model, tmp_path_factory) -> Path:
    """A bundle with a generator, two scorers and a relevance scorer, exported through the CLI."""
    out = tmp_path_factory.mktemp("relevance-bundle") / "bundle"
    args = ["export", "--generator", str(models["gpt2"]), "--discriminator", str(models["disc"]), "--upvotes", str(models["upv"]),
            "--relevance", str(relevance_model), "--out", str(out), "--no-quality-gate", "--threshold", "0", *VALIDATION]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_the_export_writes_a_relevance_part_that_matches_pytorch(relevance_bundle) -> None:
    bundle = Bundle.read(relevance_bundle)
    assert bundle.relevance is not None and bundle.relevance.kind == "cosine"
    assert set(bundle.scorers) == {"discriminator", "upvotes", "relevance"}
    check = bundle.validation["relevance_vs_torch"]
    assert check["correlation"] > 0.98 or check["max_abs_diff"] <= check["tolerance"], check


def test_relevance_is_the_calibrated_cosine_of_comment_and_reply(relevance_bundle) -> None:
    bot = replyrank.load(relevance_bundle)
    scores = bot.score_pairs([(COMMENT, COMMENT), (COMMENT, REPLIES[0])])
    # a text's cosine with itself is 1, so its relevance is exactly sigmoid(scale + offset)
    assert scores["relevance"][0] == pytest.approx(1 / (1 + math.exp(-(SCALE + OFFSET))), abs=1e-6)
    assert 0 < scores["relevance"][1] < scores["relevance"][0]


def test_selection_multiplies_realism_relevance_and_upvote_chance(relevance_bundle) -> None:
    bot = replyrank.load(relevance_bundle)
    result = bot.score(COMMENT, REPLIES)
    jsonschema.validate(result.to_dict(), json.loads(RESULT_SCHEMA.read_text()))
    for c in result.candidates:
        assert 0 <= c.relevance <= 1
        assert c.pick_score == pytest.approx(c.realism * c.relevance * c.upvote_chance)
    assert [c.pick_score for c in result.candidates] == sorted((c.pick_score for c in result.candidates), reverse=True)
    assert "relevance" in result.why
    generated = bot.reply(COMMENT, candidates=3, max_new_tokens=8, seed=1)
    assert all(c.relevance is not None for c in generated.candidates if c.realism is not None)


def test_a_bundle_without_relevance_selects_on_realism_and_upvotes_alone(gpt2_bundle) -> None:
    result = replyrank.load(gpt2_bundle).score(COMMENT, REPLIES)
    jsonschema.validate(result.to_dict(), json.loads(RESULT_SCHEMA.read_text()))
    for c in result.candidates:
        assert c.relevance is None and c.pick_score == pytest.approx(c.realism * c.upvote_chance)
    assert "relevance" not in result.why


def test_rank_and_info_show_relevance(relevance_bundle) -> None:
    ranked = CliRunner().invoke(main, ["rank", "--bundle", str(relevance_bundle), "--comment", COMMENT, *REPLIES])
    assert ranked.exit_code == 0, ranked.output
    assert "relevant" in ranked.output.splitlines()[0]
    data = json.loads(CliRunner().invoke(main, ["rank", "--bundle", str(relevance_bundle), "--json", "--comment", COMMENT, *REPLIES]).output)
    assert all(isinstance(c["relevance"], float) for c in data["candidates"])
    info = CliRunner().invoke(main, ["info", "--bundle", str(relevance_bundle)])
    assert info.exit_code == 0 and "relevance" in info.output and "cosine" in info.output


def test_a_changed_relevance_graph_is_caught_at_load(relevance_bundle, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(relevance_bundle, copy)
    (copy / "relevance" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(BundleError, match="relevance/model.onnx"):
        replyrank.load(copy)


def test_a_manifest_that_makes_a_pair_scorer_a_cosine_is_refused(relevance_bundle, tmp_path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(relevance_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["upvotes"]["kind"] = "cosine"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="cosine"):
        Bundle.read(copy)


def test_a_relevance_folder_without_a_calibration_is_refused_in_one_line(models, relevance_model, tmp_path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(relevance_model, broken)
    info = json.loads((broken / "replyrank_relevance.json").read_text())
    del info["calibration"]
    (broken / "replyrank_relevance.json").write_text(json.dumps(info))
    result = CliRunner().invoke(main, ["export", "--discriminator", str(models["disc"]), "--upvotes", str(models["upv"]),
                                       "--relevance", str(broken), "--out", str(tmp_path / "out"), "--no-quality-gate", *VALIDATION])
    assert result.exit_code != 0 and "calibration" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_score_pairs_gives_every_score_of_the_bundle(relevance_bundle) -> None:
    scores = replyrank.load(relevance_bundle).score_pairs(list(PAIRS))
    assert set(scores) == {"realism", "upvotes", "relevance"}
    assert np.all((scores["relevance"] >= 0) & (scores["relevance"] <= 1)) and np.ptp(scores["relevance"]) > 0
