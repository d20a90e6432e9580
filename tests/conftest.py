"""Session fixtures: tiny models the tests build (GPT-2, Llama, two BERT scorers) and bundles exported from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny import CALIBRATION_PAIRS, PAIRS, build_generator, build_scorer


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "gpt2": build_generator(root / "gpt2", "gpt2"),
        "llama": build_generator(root / "llama", "llama"),
        "disc": build_scorer(root / "disc", 2),
        "upv": build_scorer(root / "upv", 1, seed=1),
    }


def _export(models, out: Path, generator: str, calibration=None, **options) -> Path:
    from replyrank.export import ExportOptions, export_bundle

    export_bundle(str(models[generator]), str(models["disc"]), str(models["upv"]), out, PAIRS, ExportOptions(quality_gate=False, **options), calibration)
    return out


@pytest.fixture(scope="session")
def gpt2_bundle(models, tmp_path_factory) -> Path:
    return _export(models, tmp_path_factory.mktemp("b") / "gpt2", "gpt2")


@pytest.fixture(scope="session")
def llama_bundle(models, tmp_path_factory) -> Path:
    """The fused (onnxruntime-genai builder) Llama graph, int8."""
    return _export(models, tmp_path_factory.mktemp("b") / "llama", "llama")


@pytest.fixture(scope="session")
def llama_dynamic_bundle(models, tmp_path_factory) -> Path:
    """The fused Llama graph, int8 with calibration texts: smoothed dynamic int8 beside MatMulNBits (export.quantize)."""
    return _export(models, tmp_path_factory.mktemp("b") / "llama-dynamic", "llama", calibration=CALIBRATION_PAIRS)


@pytest.fixture(scope="session")
def llama_fp32_bundle(models, tmp_path_factory) -> Path:
    return _export(models, tmp_path_factory.mktemp("b") / "llama32", "llama", quantize="none")


@pytest.fixture(scope="session")
def gpt2_fp32_bundle(models, tmp_path_factory) -> Path:
    return _export(models, tmp_path_factory.mktemp("b") / "gpt232", "gpt2", quantize="none")
