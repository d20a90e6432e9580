"""One encoder, two heads (export.rankers): training steps, save/load, the two-output graph against PyTorch, and a
discriminator (the realism head alone) exported beside a transformers upvote model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tiny
from tiny import CORPUS, PAIRS

import replyrank
from replyrank.bundle import DISCRIMINATOR, UPVOTES
from replyrank.dumps import Pair, SiblingPair
from replyrank.export import ExportOptions, export_bundle, rankers

FAST = rankers.RankerOptions(batch_size=4, learning_rate=1e-3, max_length=64, device="cpu", bf16=False)


def sibling(i: int) -> SiblingPair:
    parent = CORPUS[i % 8]
    better = Pair(parent, CORPUS[(i + 1) % 8] + " and a longer answer", 10, f"t{i}", "s", 0, f"a{i}", f"t1_p{i}")
    worse = Pair(parent, CORPUS[(i + 3) % 8], 1, f"t{i}", "s", 60, f"b{i}", f"t1_p{i}")
    return SiblingPair(better, worse, 9, 60 / 3600, 1.0)


@pytest.fixture(scope="module")
def pair_model(models, tmp_path_factory) -> Path:
    model, tokenizer, fit = rankers.train_upvotes([sibling(i) for i in range(16)], str(models["disc"]), FAST, progress=False)
    real = [(CORPUS[i], CORPUS[i + 1]) for i in range(16)]
    fake = [(CORPUS[i], "the the the the") for i in range(16)]
    realism = rankers.train_realism(model, tokenizer, real, fake, real[:4], fake[:4], FAST, progress=False)
    info = {
        "heads": {"upvotes": {"trained": True, "bt_scale": 0.8, **fit}, "realism": {"trained": True, **realism}},
        "options": {"max_length": 64}, "text_normalization": "dialogrpt", "evaluation": {"test_threads": {"pairwise": {}}},
    }
    return rankers.save(model, tokenizer, tmp_path_factory.mktemp("pair") / "scorer", info)


def test_training_steps_report_and_save_load(pair_model: Path) -> None:
    model, tokenizer, info = rankers.load(pair_model)
    assert info["heads"]["realism"]["train_examples"] == 32 and 0 <= info["heads"]["realism"]["roc_auc"] <= 1
    assert np.isfinite(info["heads"]["upvotes"]["final_loss"])
    assert rankers.is_pair_model(pair_model) and not rankers.is_pair_model(pair_model / "encoder")
    again, _, _ = rankers.load(pair_model)
    assert np.array_equal(rankers.predict(model, tokenizer, PAIRS)[1], rankers.predict(again, tokenizer, PAIRS)[1])


def test_fit_upvote_scale_by_hand() -> None:
    assert rankers.fit_upvote_scale(np.zeros(3), np.zeros(3)) == 0.0
    # differences +1 (won) three times, -1 (lost) once: sigmoid(k) = 3/4 -> k = log 3
    assert rankers.fit_upvote_scale(np.array([1.0, 1, 1, 0]), np.array([0.0, 0, 0, 1])) == pytest.approx(np.log(3), rel=1e-4)
    # a head that orders pairs no better than chance gets no weight
    assert rankers.fit_upvote_scale(np.array([1.0, 0]), np.array([0.0, 1])) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def two_head_bundle(models, pair_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "two-head"
    export_bundle(str(models["gpt2"]), str(pair_model), str(pair_model), out, PAIRS, ExportOptions(quantize="none"))
    return out


def test_two_head_graph_matches_pytorch_for_both_heads(two_head_bundle: Path, pair_model: Path) -> None:
    bot = replyrank.load(two_head_bundle)
    assert bot.bundle.shared_scorer and len(bot.scorers.graphs) == 1
    assert (bot.bundle.discriminator.output, bot.bundle.upvotes.output) == rankers.OUTPUTS
    assert bot.bundle.upvotes.pairwise_scale == 0.8 and bot.bundle.upvotes.text_normalization == "dialogrpt"
    validation = bot.bundle.validation
    for name in (DISCRIMINATOR, UPVOTES):
        assert validation[f"{name}_vs_torch"]["correlation"] > 0.999 and validation[f"{name}_vs_torch"]["max_abs_diff"] < 1e-4
    model, tokenizer, _ = rankers.load(pair_model)
    comment, replies = PAIRS[0][0], [r for _, r in PAIRS[:5]]
    realism, upvotes = rankers.predict(model, tokenizer, [(comment, r) for r in replies], max_length=64)
    graph = bot.scorers.graphs["scorer"]
    runs = []
    run = graph.session.run
    graph.session.run = lambda *a, **k: runs.append(1) or run(*a, **k)
    scores = bot.scorers(comment, replies)
    assert len(runs) == len(replies)  # both heads from one encoder pass per pair
    assert np.allclose(scores[DISCRIMINATOR], realism, atol=1e-5) and np.allclose(scores[UPVOTES], upvotes, atol=1e-4)
    result = bot.score(comment, replies)
    assert result.best is not None and result.why


def test_two_head_graph_quantized_keeps_both_heads(models, pair_model, tmp_path) -> None:
    bundle = export_bundle(str(models["gpt2"]), str(pair_model), str(pair_model), tmp_path / "q", PAIRS, ExportOptions())
    for name in (DISCRIMINATOR, UPVOTES):
        check = bundle.validation[f"{name}_vs_torch"]
        assert check["pairs"] == len(PAIRS)
        assert check["correlation"] >= 0.95 or check["max_abs_diff"] <= check["tolerance"]  # the export's scorer gate
    assert replyrank.load(tmp_path / "q").bundle.quantization == "int8"


COLLEGE = [tiny.REDDIT / "college" / "RC_CollegeAdvice.zst", tiny.REDDIT / "college" / "RS_CollegeAdvice.zst"]


@pytest.mark.skipif(not all(f.is_file() for f in COLLEGE), reason="shared Reddit data absent")
def test_train_upvotes_then_realism_then_export_from_the_cli(models, gpt2_bundle, tmp_path) -> None:
    from click.testing import CliRunner

    from replyrank.cli import main

    runner = CliRunner()
    data = [arg for f in COLLEGE for arg in ("--data", str(f))]
    upvotes = runner.invoke(main, ["train", "upvotes", *data, "--base", str(models["disc"]), "--out", str(tmp_path / "upv"),
                                   "--epochs", "1", "--batch-size", "8", "--lora-rank", "0", "--min-gap", "1", "--max-pairs", "32",
                                   "--device", "cpu"])
    assert upvotes.exit_code == 0, upvotes.output
    report = json.loads(upvotes.stdout)
    assert 8 <= report["training_pairs"] <= 32 and report["heads"]["upvotes"]["bt_scale"] >= 0
    assert set(report["evaluation"]["test_threads"]["pairwise"]["gap>=1"]) == {"model", "time", "length"}
    realism = runner.invoke(main, ["train", "realism", *data, "--scorer", str(tmp_path / "upv"), "--generator", str(gpt2_bundle),
                                   "--out", str(tmp_path / "scorer"), "--fakes", "16", "--epochs", "1", "--device", "cpu"])
    assert realism.exit_code == 0, realism.output
    assert 0 <= json.loads(realism.stdout)["realism"]["roc_auc"] <= 1
    export = runner.invoke(main, ["export", "--generator", str(models["gpt2"]), "--scorer", str(tmp_path / "scorer"),
                                  "--out", str(tmp_path / "bundle"), "--quantize", "none",
                                  *[arg for f in COLLEGE for arg in ("--validation-data", str(f))]])
    assert export.exit_code == 0, export.output
    bot = replyrank.load(tmp_path / "bundle")
    assert bot.bundle.shared_scorer and bot.bundle.upvotes.pairwise_scale == report["heads"]["upvotes"]["bt_scale"]
    assert "test_threads" in bot.bundle.upvotes.metrics["evaluation"] and "roc_auc" in bot.bundle.discriminator.metrics


def test_realism_training_moves_an_encoder_rebuilt_from_a_lora_adapter(models, tmp_path) -> None:
    import shutil

    import torch

    lora = replace_options(lora_rank=4)
    model, tokenizer, _ = rankers.train_upvotes([sibling(i) for i in range(8)], str(models["disc"]), lora, progress=False)
    folder = rankers.save(model, tokenizer, tmp_path / "lora", {"heads": {}, "options": {"max_length": 64}})
    shutil.rmtree(folder / "encoder")  # what ships: the adapter and the heads only
    model, tokenizer, _ = rankers.load(folder, base=str(models["disc"]))
    before = [p.detach().clone() for p in model.encoder.parameters()]
    real = [(CORPUS[i], CORPUS[i + 1]) for i in range(16)]
    fake = [(CORPUS[i], "the the the the") for i in range(16)]
    rankers.train_realism(model, tokenizer, real, fake, real[:4], fake[:4], FAST, distill_weight=0.0, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters()))  # the encoder learned too


def replace_options(**changes) -> rankers.RankerOptions:
    from dataclasses import replace

    return replace(FAST, **changes)


def test_a_discriminator_exports_beside_a_transformers_upvote_model(models, tmp_path) -> None:
    from replyrank.filters import normalize_text

    real = [(CORPUS[i], CORPUS[i + 1]) for i in range(16)]
    fake = [(CORPUS[i], "the the the the") for i in range(16)]
    metrics = rankers.train_discriminator(real, fake, real[:4], fake[:4], str(models["disc"]), tmp_path / "disc", FAST)
    info = rankers.read_info(tmp_path / "disc")
    assert info["heads"]["realism"]["roc_auc"] == metrics["roc_auc"] and metrics["objective"] == "cross-entropy"
    assert not info["heads"]["upvotes"]["trained"] and "upvotes_kept_correlation" not in metrics  # nothing distilled
    bundle = export_bundle(str(models["gpt2"]), str(tmp_path / "disc"), str(models["upv"]), tmp_path / "b", PAIRS, ExportOptions(quantize="none"))
    assert not bundle.shared_scorer and (bundle.discriminator.path, bundle.discriminator.output) == (DISCRIMINATOR, rankers.OUTPUTS[0])
    assert (bundle.upvotes.path, bundle.upvotes.output) == (UPVOTES, "logits")
    assert bundle.validation["discriminator_vs_torch"]["max_abs_diff"] < 1e-4
    model, tokenizer, _ = rankers.load(tmp_path / "disc")
    comment, replies = PAIRS[0][0], [r for _, r in PAIRS[:5]]
    realism, _ = rankers.predict(model, tokenizer, [(normalize_text(comment), normalize_text(r)) for r in replies], max_length=64)
    scores = replyrank.load(tmp_path / "b").scorers(comment, replies)
    assert np.allclose(scores[DISCRIMINATOR], realism, atol=1e-5)
