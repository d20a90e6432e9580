"""The generator's int8 layout with calibration texts (export.quantize): SmoothQuant folded into the fp32 graph, dynamic
int8 for the norm-fed and attention-output projections, MatMulNBits for the rest, and the weight-only fallback where
that layout misses the gate; a CPU unlike the one the gate ran on is told."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tiny import CALIBRATION_PAIRS, PAIRS

import replyrank
from replyrank.bundle import MANIFEST, Bundle
from replyrank.environment import int8_dot_product
from replyrank.export.assemble import export_generator
from replyrank.export.quantize import Calibration, activation_ranges, dynamic_layout, fold_transposed_weights, smooth
from replyrank.export.validate import token_sequences
from replyrank.generate import GenerationOptions, Generator

COMMENT = "has anyone tried the pasta place near campus"


@pytest.fixture(scope="module")
def fp32_llama(models, tmp_path_factory) -> tuple[Path, object]:
    """The fused fp32 Llama graph (`work/generator-fp32`) and its spec."""
    work = tmp_path_factory.mktemp("fp32-llama")
    spec, _, _ = export_generator(str(models["llama"]), work / "part", work, "none")
    return work / "generator-fp32", replace(spec, prefix_cache=None)  # the fp32 folder has no stored prefix cache


def _logits(model: onnx.ModelProto, ids: list[int]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "position_ids": np.arange(len(ids), dtype=np.int64)[None], "attention_bias": np.zeros((1, 1, len(ids), len(ids)), dtype=np.float32),
    }
    for arg in session.get_inputs():
        if arg.name.startswith("past_key_values."):
            feed[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), dtype=np.float32)
    return session.run(["logits"], feed)[0]


def test_smoothing_leaves_the_fp32_graph_computing_the_same(fp32_llama):
    folder, spec = fp32_llama
    model = onnx.load(str(folder / "model.onnx"))
    fold_transposed_weights(model)
    ids = token_sequences(Generator(folder, spec), PAIRS, limit=1)[0]
    before = _logits(model, ids)
    smoothed, dynamic = dynamic_layout(model)
    # per layer: the input norm (q/k/v), the post-attention norm (gate, up) and the MLP's product (down)
    assert len(smoothed) == 3 * 2 and len(dynamic) == 3 * 2
    weights = {i.name: onnx.numpy_helper.to_array(i).copy() for i in model.graph.initializer}
    calibration = Calibration(token_sequences(Generator(folder, spec), CALIBRATION_PAIRS, limit=8), skip=2)
    smooth(model, activation_ranges(folder / "model.onnx", smoothed, calibration))
    changed = [i.name for i in model.graph.initializer if i.name in weights and not np.array_equal(onnx.numpy_helper.to_array(i), weights[i.name])]
    assert any("layernorm" in name for name in changed) and any("qkv_proj" in name for name in changed)
    np.testing.assert_allclose(_logits(model, ids), before, rtol=1e-4, atol=1e-4)


def test_the_dynamic_layout_and_its_record(llama_dynamic_bundle, llama_bundle):
    graph = onnx.load(str(Path(llama_dynamic_bundle) / "generator" / "model.onnx"), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    # 2 layers: q/k/v, o, gate, up dynamic; down and the LM head MatMulNBits
    assert ops["DynamicQuantizeMatMul"] == 4 * 2 and ops["MatMulNBits"] == 2 + 1 and ops["MatMul"] == 0
    layout = Bundle.read(llama_dynamic_bundle).validation["generator_layout"]
    assert layout.pop("validated_on")["cpu"]  # the CPU whose int8 GEMMs the gate measured
    assert layout == {"dynamic_int8": 8, "smoothing_alpha": 0.7, "calibration_texts": len(CALIBRATION_PAIRS), "matmul_nbits": 3}
    # without calibration texts every MatMul is MatMulNBits
    plain = onnx.load(str(Path(llama_bundle) / "generator" / "model.onnx"), load_external_data=False).graph
    assert Counter(node.op_type for node in plain.node)["DynamicQuantizeMatMul"] == 0
    assert Bundle.read(llama_bundle).validation["generator_layout"]["dynamic_int8"] == 0


def test_the_dynamic_bundle_stays_near_fp32_and_replies(llama_dynamic_bundle, llama_fp32_bundle):
    dynamic, fp32 = replyrank.load(llama_dynamic_bundle).generator, replyrank.load(llama_fp32_bundle).generator
    prompt = fp32.encode_prompt(COMMENT, GenerationOptions()).ids
    k = len(fp32.prefix_ids)
    a, _ = dynamic.forward(np.array([prompt[k:]]), k, dynamic.prefix_cache)
    b, _ = fp32.forward(np.array([prompt[k:]]), k, fp32.prefix_cache)
    # without int8 dot products (VNNI), the AVX2 kernel adds u8 x s8 products pairwise in saturating 16 bits: a looser bound
    assert np.corrcoef(a[0, -1], b[0, -1])[0, 1] > (0.99 if int8_dot_product() else 0.98)
    result = replyrank.load(llama_dynamic_bundle, realism_threshold=0.0).reply(COMMENT, candidates=3, max_new_tokens=8, seed=1)
    again = replyrank.load(llama_dynamic_bundle, realism_threshold=0.0).reply(COMMENT, candidates=3, max_new_tokens=8, seed=1)
    assert len(result.candidates) == 3 and [c.text for c in result.candidates] == [c.text for c in again.candidates]
    validation = Bundle.read(llama_dynamic_bundle).validation["generator_quantized_vs_fp32"]
    assert validation["candidates"] == 8 and validation["positions"] == 8 * validation["steps"] * min(16, len(PAIRS))


def test_a_dynamic_layout_that_misses_the_gate_falls_back_to_weight_only(models, tmp_path, monkeypatch, capsys):
    """On a model where the smoothed dynamic-int8 layout misses the gate, the export quantizes weight-only and says so."""
    from replyrank.export import ExportOptions, export_bundle
    from replyrank.export import assemble

    measure = assemble.generator_quantized_vs_fp32

    def strict(fp32_dir, quantized_dir, *args):
        quality = measure(fp32_dir, quantized_dir, *args)
        graph = onnx.load(str(Path(quantized_dir) / "model.onnx"), load_external_data=False).graph
        if any(node.op_type == "DynamicQuantizeMatMul" for node in graph.node):
            quality = {**quality, "sampling_agreement": 0.5}  # as a model with outliers the smoothing cannot hold would score
        return quality

    monkeypatch.setattr(assemble, "generator_quantized_vs_fp32", strict)
    out = tmp_path / "bundle"
    export_bundle(str(models["llama"]), str(models["disc"]), str(models["upv"]), out, PAIRS, ExportOptions(), CALIBRATION_PAIRS)
    validation = Bundle.read(out).validation
    assert validation["passed"] and validation["generator_layout"]["dynamic_int8"] == 0
    assert validation["generator_layout"]["fallback"].startswith("the dynamic-int8 layout missed the gate: generator sampling agreement 0.500")
    graph = onnx.load(str(out / "generator" / "model.onnx"), load_external_data=False).graph
    assert not any(node.op_type == "DynamicQuantizeMatMul" for node in graph.node)
    assert "quantizing weight-only" in capsys.readouterr().err
    assert replyrank.load(out).reply(COMMENT, candidates=2, max_new_tokens=4).candidates


def test_a_cpu_without_int8_dot_products_is_told_when_the_gate_ran_on_one(llama_dynamic_bundle, tmp_path, monkeypatch):
    import warnings

    from click.testing import CliRunner

    from replyrank import environment
    from replyrank.cli import main

    layout = Bundle.read(llama_dynamic_bundle).validation["generator_layout"]
    assert set(layout["validated_on"]) == {"cpu", "int8_dot_product"}  # recorded by the export that gated it
    copy = tmp_path / "bundle"
    shutil.copytree(llama_dynamic_bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["validation"]["generator_layout"]["validated_on"] = {"cpu": "a VNNI CPU", "int8_dot_product": True}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    for here, warned in ((False, True), (True, False), (None, False)):
        monkeypatch.setattr(environment, "int8_dot_product", lambda here=here: here)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            replyrank.load(copy)
        notes = [str(w.message) for w in caught if "int8 dot products" in str(w.message)]
        assert bool(notes) == warned
    monkeypatch.setattr(environment, "int8_dot_product", lambda: False)
    result = CliRunner().invoke(main, ["reply", "hello there", "--bundle", str(copy), "-n", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0 and "note: the generator's dynamic-int8 layers passed the export's quality gate on a CPU" in result.stderr
    assert "(a VNNI CPU); this one has none" in result.stderr and "note" not in result.stdout
