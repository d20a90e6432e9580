"""The export's contract: ONNX matches PyTorch, greedy decoding matches transformers' generate(),
quantized matches fp32 within the stated tolerance, and bad input fails cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import PAIRS, REDDIT

import replyrank
from replyrank.bundle import Bundle
from replyrank.errors import BundleError
from replyrank.export import ExportError, ExportOptions, export_bundle
from replyrank.export.validate import generator_vs_torch
from replyrank.generate import GenerationOptions


@pytest.mark.parametrize("bundle", ["gpt2_fp32_bundle", "llama_fp32_bundle"])
def test_onnx_logits_match_torch_for_prefill_and_cached_decode(bundle, models, request):
    path = request.getfixturevalue(bundle)
    read = Bundle.read(path)
    name = "gpt2" if "gpt2" in bundle else "llama"
    diffs = generator_vs_torch(read.folder(read.generator), read.generator, models[name], PAIRS)
    assert diffs["prefill_max_abs_logit_diff"] < 1e-4
    assert diffs["decode_max_abs_logit_diff"] < 1e-4
    assert read.validation["generator_fp32_vs_torch"]["prefill_max_abs_logit_diff"] < 1e-4


@pytest.mark.parametrize("bundle", ["gpt2_bundle", "llama_bundle"])
def test_quantized_weights_sit_beside_a_small_graph(bundle, request):
    """Every part keeps its weights in model.onnx.data, which ONNX Runtime memory-maps at load."""
    import onnx

    root = Path(request.getfixturevalue(bundle))
    for part in ("generator", "discriminator", "upvotes"):
        graph_file, weights_file = root / part / "model.onnx", root / part / "model.onnx.data"
        graph = onnx.load(str(graph_file), load_external_data=False).graph
        external = [t for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert external and {e.value for t in external for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
        assert weights_file.stat().st_size >= sum(int(e.value) for t in external for e in t.external_data if e.key == "length")


# The 12 greedy tokens the fp32 ONNX graphs of the tiny models (tests/tiny.py, seed 0) write after the prompt
# of "has anyone tried the pasta place": recorded once, as onnxruntime-genai pins its tiny GPT-2's output.
GREEDY = {
    "gpt2": [296, 296, 143, 296, 197, 297, 312, 296, 296, 312, 296, 79],
    "llama": [116, 5, 49, 176, 41, 234, 312, 258, 196, 93, 55, 23],
}


@pytest.mark.parametrize("bundle,name", [("gpt2_fp32_bundle", "gpt2"), ("llama_fp32_bundle", "llama")])
def test_greedy_generation_is_the_recorded_sequence_and_equals_transformers_generate(bundle, name, models, request):
    from transformers import AutoModelForCausalLM

    bot = replyrank.load(request.getfixturevalue(bundle))
    options = GenerationOptions(candidates=1, max_new_tokens=12, min_new_tokens=12, temperature=0.0)
    prompt = bot.generator.encode_prompt("has anyone tried the pasta place", options)
    (ours,), _ = bot.generator.generate(prompt.ids, options, [np.random.default_rng(0)])
    model = AutoModelForCausalLM.from_pretrained(models[name]).eval()
    with torch.no_grad():
        reference = model.generate(
            torch.tensor([prompt.ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0
        )[0, len(prompt.ids) :].tolist()
    assert list(ours.token_ids) == GREEDY[name]
    assert reference == GREEDY[name]


def test_quantized_generator_tracks_fp32(gpt2_bundle, llama_bundle):
    for bundle in (gpt2_bundle, llama_bundle):
        validation = Bundle.read(bundle).validation
        quantized = validation["generator_quantized_vs_fp32"]
        # tiny random models have near-ties everywhere; the real bundle is gated at GATES
        assert quantized["top1_agreement"] >= 0.85 and quantized["mean_kl"] < 0.05
        assert 0.85 <= quantized["sampling_agreement"] <= 1 and quantized["sampling"]["temperature"] == 0.7
        for scorer in (validation["discriminator_vs_torch"], validation["upvotes_vs_torch"]):
            # tiny random scorers barely vary, so their gate is the absolute error
            assert scorer["correlation"] > 0.95 or scorer["max_abs_diff"] <= scorer["tolerance"]


def test_manifest_hash_detects_a_changed_file(gpt2_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(gpt2_bundle, copy)
    with open(copy / "discriminator" / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="sha256"):
        replyrank.load(copy)


def test_missing_generator_is_a_clear_error_that_names_the_build_log(models, tmp_path):
    with pytest.raises(ExportError, match="cannot load generator") as failed:
        export_bundle(str(tmp_path / "nope"), str(models["disc"]), str(models["upv"]), tmp_path / "out", PAIRS)
    assert not (tmp_path / "out").exists()
    log = tmp_path / "out.build.log"
    assert str(failed.value).endswith(f"the build's log: {log}") and "Traceback" in log.read_text()


def test_non_causal_generator_is_refused(models, tmp_path):
    with pytest.raises(ExportError, match="not a causal LM"):
        export_bundle(str(models["disc"]), str(models["disc"]), str(models["upv"]), tmp_path / "out", PAIRS)
    assert not list(tmp_path.glob(".out*"))


def test_scorers_with_wrong_label_counts_are_refused(models, tmp_path):
    with pytest.raises(ExportError, match="has 1 labels; a discriminator needs 2"):
        export_bundle(str(models["gpt2"]), str(models["upv"]), str(models["upv"]), tmp_path / "out", PAIRS)
    with pytest.raises(ExportError, match="has 2 labels; a upvote model needs 1"):
        export_bundle(str(models["gpt2"]), str(models["disc"]), str(models["disc"]), tmp_path / "out", PAIRS)


def test_unwritable_output_folder_is_refused(models, tmp_path):
    # a path under a regular file cannot be created, even by root (who ignores permission bits)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot write"):
        export_bundle(str(models["gpt2"]), str(models["disc"]), str(models["upv"]), blocker / "out", PAIRS)


def test_a_folder_that_is_not_a_bundle_is_never_replaced(models, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a replyrank bundle"):
        export_bundle(str(models["gpt2"]), str(models["disc"]), str(models["upv"]), precious, PAIRS)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_quality_gate_stops_a_bad_quantization(models, tmp_path):
    with pytest.raises(ExportError, match="quality gate"):
        export_bundle(
            str(models["llama"]), str(models["disc"]), str(models["upv"]), tmp_path / "out", PAIRS, ExportOptions(quantize="int4")
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("generator", ["gpt2", "llama"])
def test_export_cli_writes_a_bundle_reports_json_and_keeps_library_output_in_its_log(models, tmp_path, generator):
    import subprocess
    import sys

    import onnx

    dumps = [REDDIT / "college" / "RS_CollegeAdvice.zst", REDDIT / "college" / "RC_CollegeAdvice.zst"]
    if not dumps[0].exists():
        pytest.skip("../shared/data/reddit is not there")
    args = ["export", "--generator", str(models[generator]), "--discriminator", str(models["disc"]), "--upvotes", str(models["upv"]),
            "--out", str(tmp_path / "b"), "--no-quality-gate", "--block-size", "32"]
    for dump in dumps:
        args += ["--validation-data", str(dump)]
    run = subprocess.run([sys.executable, "-m", "replyrank", *args], capture_output=True)  # bytes: tqdm's \r stays itself
    assert run.returncode == 0, run.stderr.decode()
    report = json.loads(run.stdout)
    assert report["validation"]["pairs"] == 32 and 0 <= report["realism_threshold"] <= 1
    assert report["validation"]["generator_block_size"] == 32
    # the dumps' other pairs calibrate the int8 smoothing: a Llama graph's norm-fed projections go dynamic (2 layers x 4),
    # GPT-2's LayerNorm graph stays MatMulNBits
    layout = report["validation"]["generator_layout"]
    assert (0 < layout["calibration_texts"] <= 64) if generator == "llama" else layout["calibration_texts"] == 0
    assert layout["dynamic_int8"] == (8 if generator == "llama" else 0)
    graph = onnx.load(str(tmp_path / "b" / "generator" / "model.onnx"), load_external_data=False).graph
    blocks = {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    assert blocks == {32}
    assert replyrank.load(tmp_path / "b").reply("hello there", candidates=2, max_new_tokens=4).candidates
    # stderr holds the progress bar (redrawn with \r) and nothing else; the quantizer's logging and the model builder's
    # prints are in the bundle's build.log
    lines = [line for line in run.stderr.decode().split("\n") if line.strip()]
    assert len(lines) == 1 and "7/7" in lines[0] and "\r" in lines[0], lines
    log = (tmp_path / "b" / "build.log").read_text()
    assert "onnxruntime.quantization.matmul_nbits_quantizer [INFO]" in log
    if generator == "llama":
        assert "Reading layer 0" in log


def test_verified_stamp_never_hides_a_changed_file(gpt2_bundle, tmp_path):
    import os

    from click.testing import CliRunner

    from replyrank.bundle import STAMP
    from replyrank.cli import main

    copy = tmp_path / "b"
    shutil.copytree(gpt2_bundle, copy)
    replyrank.load(copy)  # verifies every file and records the stamp
    assert (copy / STAMP).is_file()
    model = copy / "upvotes" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        replyrank.load(copy)
    # even a stamp forged to match the changed file does not fool `info`, which hashes everything
    stamp = json.loads((copy / STAMP).read_text())
    status = os.stat(model)
    stamp["upvotes/model.onnx"][:2] = [status.st_size, status.st_mtime_ns]
    (copy / STAMP).write_text(json.dumps(stamp))
    result = CliRunner().invoke(main, ["info", "--bundle", str(copy)])
    assert result.exit_code == 1 and "sha256" in result.stderr


def test_sampling_agreement_is_one_minus_total_variation():
    from replyrank.export.validate import sampling_agreement
    from replyrank.generate import GenerationOptions

    rng = np.random.default_rng(0)
    p = rng.normal(size=(6, 300)).astype(np.float32)
    q = p + rng.normal(scale=0.3, size=p.shape).astype(np.float32)
    sampled = GenerationOptions(temperature=0.7, top_k=40)
    assert np.allclose(sampling_agreement(p, p, sampled), 1.0)
    # greedy: the share of rows whose most likely token is the same
    greedy = sampling_agreement(p, q, GenerationOptions(temperature=0))
    assert np.array_equal(greedy, (p.argmax(-1) == q.argmax(-1)).astype(float))
    # with every token kept it is 1 - TV of the two tempered softmaxes, computed directly
    full = GenerationOptions(temperature=0.7, top_k=0)
    soft = lambda x: np.exp(x / 0.7 - np.logaddexp.reduce(x / 0.7, axis=-1, keepdims=True))
    assert np.allclose(sampling_agreement(p, q, full), 1 - 0.5 * np.abs(soft(p.astype(np.float64)) - soft(q.astype(np.float64))).sum(-1))
    # disjoint top-k sets share nothing
    shifted = np.roll(p, 150, axis=-1) - 100 * (np.arange(300) < 150)
    assert np.allclose(sampling_agreement(p - 100 * (np.arange(300) >= 150), shifted, GenerationOptions(temperature=0.7, top_k=5)), 0.0)


def test_export_cli_block_size_default_is_the_exporters():
    from replyrank.export.cli import export_command
    from replyrank.export.quantize import BLOCK_SIZE

    option = next(p for p in export_command.params if p.name == "block_size")
    assert int(option.default) == BLOCK_SIZE
