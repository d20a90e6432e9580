"""The generator graph each architecture exports to: the fused graphs (onnxruntime-genai's builder for Llama,
export.gpt2 for GPT-2) against PyTorch and optimum's unfused graph, every weight quantized in the int8 bundle, and the
template prefix's KV cache shipped beside the graph."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from tiny import PAIRS

import replyrank
from replyrank.bundle import MANIFEST, PREFIX_CACHE, Bundle
from replyrank.errors import BundleError
from replyrank.export import ExportOptions, export_bundle, gpt2
from replyrank.generate import GenerationOptions, Generator


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


@pytest.mark.parametrize("bundle,graph,matmuls", [("gpt2_bundle", "fused (export.gpt2", 2 * 4 + 1),
                                                   ("llama_bundle", "fused (onnxruntime-genai builder)", 2 * 5 + 1)])
def test_each_architecture_exports_a_fused_graph_with_an_in_place_cache_and_every_matmul_quantized(bundle, graph, matmuls, request):
    root = Path(request.getfixturevalue(bundle))
    manifest = json.loads((root / MANIFEST).read_text())["generator"]
    assert manifest["graph"].startswith(graph) and manifest["kv_cache"] == "in-place"
    ops = [n.op_type for n in onnx.load(str(root / "generator" / "model.onnx"), load_external_data=False).graph.node]
    # 2 layers of GPT-2's qkv, out, fc and proj, or of Llama's qkv, o, gate, up and down; and the LM head
    assert ops.count("GroupQueryAttention") == 2 and "MatMul" not in ops and "Gemm" not in ops and ops.count("MatMulNBits") == matmuls


def test_without_fusion_gpt2_exports_optimums_graph_with_a_concatenated_cache(gpt2_unfused_fp32_bundle):
    unfused = json.loads((Path(gpt2_unfused_fp32_bundle) / MANIFEST).read_text())["generator"]
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


def test_the_shipped_prefix_cache_is_the_fp32_graphs_own(llama_fp32_bundle, llama_bundle):
    for bundle in (llama_fp32_bundle, llama_bundle):
        spec = Bundle.read(bundle).generator
        assert spec.prefix_cache == PREFIX_CACHE and PREFIX_CACHE in spec.files
    fp32 = replyrank.load(llama_fp32_bundle).generator
    own = Generator(Path(llama_fp32_bundle) / "generator", replace(fp32.spec, prefix_cache=None))  # prefilled at load
    for name in fp32.past_names:
        np.testing.assert_allclose(fp32.prefix_cache[name].numpy(), own.prefix_cache[name].numpy(), atol=1e-5)
    # the int8 bundle starts from the same (fp32) cache
    stored = np.load(Path(llama_bundle) / "generator" / PREFIX_CACHE)
    assert stored["ids"].tolist() == fp32.prefix_ids
    np.testing.assert_allclose(stored[fp32.past_names[0]], own.prefix_cache[fp32.past_names[0]].numpy(), atol=1e-5)


def test_another_template_prefills_its_own_prefix(llama_bundle):
    generator = replyrank.load(llama_bundle).generator
    other = Generator(Path(llama_bundle) / "generator", replace(generator.spec, prompt_template="Q: {comment}\nA:"))
    assert other.prefix_ids != generator.prefix_ids
    assert other.prefix_cache[other.past_names[0]].shape()[2] == len(other.prefix_ids)


def test_a_prefix_cache_of_the_wrong_shape_is_a_clear_error(llama_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(llama_bundle, copy)
    path = copy / "generator" / PREFIX_CACHE
    arrays = dict(np.load(path))
    first = next(name for name in arrays if name != "ids")
    arrays[first] = arrays[first][:, :, :1]
    np.savez(path, **arrays)
    spec = Bundle.read(copy, verify_hashes=False).generator
    with pytest.raises(BundleError, match="does not fit its graph"):
        Generator(copy / "generator", spec)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["generator"]["prefix_cache"] = "nope.npz"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="names prefix_cache 'nope.npz', which is not among the generator's files"):
        Bundle.read(copy, verify_hashes=False)
