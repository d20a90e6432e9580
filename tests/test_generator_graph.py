"""The generator graph a bundle ships: it computes the last `logits_to_keep` positions' logits only, the last one in a
prefill and every row's in a one-sequence decode step, and their top_k (export.quantize.prune_lm_head); every attention
takes the bias that lets the candidates decode as one sequence (export.quantize.decode_as_one_sequence)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

import replyrank
from replyrank.export.quantize import decode_as_one_sequence, prune_lm_head
from replyrank.export.validate import candidate_logits
from replyrank.generate import GenerationOptions, Generator

COMMENT = "has anyone tried the pasta place near campus"


@pytest.mark.parametrize("bundle", ["gpt2_bundle", "llama_bundle", "gpt2_fp32_bundle", "llama_fp32_bundle"])
def test_bundle_generators_return_the_kept_positions_only(bundle, request):
    graph = onnx.load(str(Path(request.getfixturevalue(bundle)) / "generator" / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    assert logits.type.tensor_type.shape.dim[1].dim_param == "logits_to_keep"
    assert "logits_to_keep" in {i.name for i in graph.input}
    assert any(node.name == "/lm_head/prune/Slice" for node in graph.node)
    assert "top_k" in {i.name for i in graph.input} and {"top_logits", "top_ids"} <= {o.name for o in graph.output}


@pytest.mark.parametrize("bundle", ["gpt2_bundle", "llama_bundle"])
def test_pruned_head_gives_the_full_heads_last_logits(bundle, request, tmp_path):
    """The same graph with the Slice taken out again returns every position; its last one equals the pruned graph's."""
    source = Path(request.getfixturevalue(bundle))
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy)
    model = onnx.load(str(copy / "generator" / "model.onnx"), load_external_data=False)
    graph = model.graph
    head = next(node for node in graph.node if "logits" in node.output)
    cut = next(node for node in graph.node if node.name == "/lm_head/prune/Slice")
    head.input[0] = cut.input[0]
    keep = [node for node in graph.node if not node.name.startswith("/lm_head/prune/") and node.op_type != "TopK"]
    del graph.node[:]
    graph.node.extend(keep)
    inputs = [i for i in graph.input if i.name not in ("logits_to_keep", "top_k")]
    del graph.input[:]
    graph.input.extend(inputs)
    outputs = [o for o in graph.output if o.name not in ("top_logits", "top_ids")]
    del graph.output[:]
    graph.output.extend(outputs)
    logits = next(o for o in graph.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].dim_param = "sequence_length"
    onnx.save(model, str(copy / "generator" / "model.onnx"))
    pruned = replyrank.load(source).generator
    full = Generator(copy / "generator", pruned.spec)  # the generator alone: the copy's hashes no longer match its manifest
    prompt = pruned.encode_prompt(COMMENT, GenerationOptions()).ids
    a, _ = pruned.forward(np.array([prompt]), 0, pruned.empty_cache(1))
    b, _ = full.forward(np.array([prompt]), 0, full.empty_cache(1))
    assert a.shape[1] == 1 and b.shape[1] == len(prompt)
    np.testing.assert_allclose(a[:, -1], b[:, -1], atol=1e-5)
    # the validation's teacher forcing (prefix cache, the rest of the prompt, then one token a step) through the pruned
    # graph gives every position the full pass gives; the prefix prefilled by this graph, not the bundle's fp32 one
    own = Generator(source / "generator", replace(pruned.spec, prefix_cache=None))
    start = len(own.prefix_ids) + 2
    forced = candidate_logits(own, prompt[:start], np.array([prompt[start:]]))
    np.testing.assert_allclose(forced[0], b[0, start - 1 : -1], atol=1e-3)


@pytest.mark.parametrize("bundle", ["llama_bundle", "gpt2_bundle", "llama_dynamic_bundle"])
def test_bundle_graphs_give_every_attention_the_bias(bundle, request):
    graph = onnx.load(str(Path(request.getfixturevalue(bundle)) / "generator" / "model.onnx"), load_external_data=False).graph
    assert {"attention_bias", "position_ids", "logits_to_keep"} <= {i.name for i in graph.input}
    attention = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    assert attention and all(node.input[10] == "attention_bias" for node in attention)
    rotary = [node for node in attention if any(a.name == "do_rotary" and a.i for a in node.attribute)]
    assert all(node.input[9] == "position_ids" for node in rotary)


@pytest.mark.parametrize("rewrite", [prune_lm_head, decode_as_one_sequence])
def test_the_graph_passes_leave_a_graph_without_their_node_alone(rewrite, tmp_path):
    """No MatMul head (prune_lm_head), no GroupQueryAttention (decode_as_one_sequence): False, and the file as it was."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "s", 4])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), str(path))
    before = path.read_bytes()
    assert rewrite(path) is False and path.read_bytes() == before
