"""The fused GPT-2 graph (export.gpt2): PyTorch's logits, optimum's unfused graph's logits and greedy tokens, and
every weight quantized in the int8 bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny import PAIRS

import replyrank
from replyrank.export import ExportOptions, export_bundle, gpt2
from replyrank.generate import GenerationOptions


@pytest.fixture(scope="module")
def gpt2_unfused_fp32_bundle(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "gpt2-unfused"
    export_bundle(str(models["gpt2"]), str(models["disc"]), str(models["upv"]), out, PAIRS,
                  ExportOptions(quality_gate=False, quantize="none", fused=False))
    return out


def test_the_fused_graph_matches_torch_for_prefill_and_an_in_place_decode_step(models, tmp_path):
    assert gpt2.build(models["gpt2"], tmp_path / "fused")  # build runs check_parity, which raises past its tolerance
    diffs = gpt2.check_parity(tmp_path / "fused", models["gpt2"], length=40, seed=3)
    assert diffs["prefill_max_abs_logit_diff"] < 1e-4 and diffs["decode_max_abs_logit_diff"] < 1e-4


def test_gpt2_exports_fused_with_an_in_place_cache_and_every_matmul_quantized(gpt2_bundle, gpt2_unfused_fp32_bundle):
    manifest = json.loads((Path(gpt2_bundle) / "replyrank.json").read_text())["generator"]
    assert manifest["graph"].startswith("fused (export.gpt2") and manifest["kv_cache"] == "in-place"
    ops = [n.op_type for n in onnx.load(str(Path(gpt2_bundle) / "generator" / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "MatMul" not in ops and "Gemm" not in ops and ops.count("MatMulNBits") == 2 * 4 + 1
    unfused = json.loads((Path(gpt2_unfused_fp32_bundle) / "replyrank.json").read_text())["generator"]
    assert unfused["graph"].startswith("optimum") and unfused["kv_cache"] == "concat"


def test_fused_and_unfused_fp32_graphs_give_the_same_logits_and_greedy_tokens(gpt2_fp32_bundle, gpt2_unfused_fp32_bundle):
    fused, unfused = replyrank.load(gpt2_fp32_bundle).generator, replyrank.load(gpt2_unfused_fp32_bundle).generator
    options = GenerationOptions(candidates=1, max_new_tokens=12, min_new_tokens=12, temperature=0.0)
    ids = fused.encode_prompt("has anyone tried the pasta place", options).ids
    logits = [g.forward(np.array([ids]), 0, g.empty_cache(1))[0][0, -1] for g in (fused, unfused)]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-4)
    # sampled rows too: the same seeds give the same candidates on both graphs, 4 rows decoding together
    for options in (options, GenerationOptions(candidates=4, max_new_tokens=10, min_new_tokens=10, seed=5)):
        rngs = lambda: [np.random.default_rng(s) for s in range(options.candidates)]  # noqa: E731
        ours, _ = fused.generate(ids, options, rngs())
        theirs, _ = unfused.generate(ids, options, rngs())
        assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
