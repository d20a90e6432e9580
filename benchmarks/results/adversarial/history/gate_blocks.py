"""The export's int8 gate on a generator adapter at several MatMulNBits layouts, without building a bundle.

python gate_blocks.py ADAPTER_DIR WORK_DIR   (validation pairs: the default build's 32 held-out chitchat turns)
Layouts: block 64 (the bundle's), block 32, and block 64 with the LM head alone at block 32.
"""
import json, random, shutil, sys, time
from pathlib import Path

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from replyrank.export.assemble import DEPLOYMENT, export_generator
from replyrank.export.chitchat import load_turns
from replyrank.export.default import PROMPT, _split, generator_source
from replyrank.export.quantize import fold_transposed_weights, optimize_offline, prune_lm_head, quantize_model
from replyrank.export.validate import generator_quantized_vs_fp32

adapter, work = Path(sys.argv[1]), Path(sys.argv[2])
work.mkdir(parents=True, exist_ok=True)
train_turns, test_turns = _split(load_turns(max_chars=200))  # as build_default_bundle draws them
rng = random.Random(0)
rng.shuffle(train_turns)
rng.shuffle(test_turns)
pairs = [(t.message, t.reply) for t in test_turns[:32]]
source = generator_source(work, adapter) if adapter.name != "none" else generator_source(work, None)
spec, _ = export_generator(source, work / "int8-64", work, "int8", PROMPT, sampling=DEPLOYMENT)
fp32 = work / "generator-fp32"
out = {"block 64": generator_quantized_vs_fp32(fp32, work / "int8-64", spec, pairs, DEPLOYMENT)}
print(json.dumps(out), flush=True)


def layout(name, quantize):
    folder = work / name
    shutil.copytree(work / "int8-64", folder, ignore=shutil.ignore_patterns("model.onnx*"), dirs_exist_ok=True)
    quantize(folder / "model.onnx")
    optimize_offline(folder / "model.onnx"); prune_lm_head(folder / "model.onnx")
    out[name] = generator_quantized_vs_fp32(fp32, folder, spec, pairs, DEPLOYMENT)
    print(name, json.dumps(out[name]), flush=True)


layout("block 32".replace(" ", "-"), lambda dst: quantize_model(fp32 / "model.onnx", dst, "int8", block_size=32))


def head_32(dst):
    model = onnx.load(str(fp32 / "model.onnx"))
    fold_transposed_weights(model)
    sizes = {t.name: t.dims[0] * t.dims[-1] for t in model.graph.initializer if len(t.dims) == 2}
    head = max((n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in sizes), key=lambda n: sizes[n.input[1]]).name
    print("LM head node:", head, flush=True)
    for block, include, exclude in ((64, None, [head]), (32, [head], None)):
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_include=include, nodes_to_exclude=exclude)
        quantizer.process()
        model = quantizer.model.model
    onnx.save(model, str(dst))


layout("body-64-head-32", head_32)
print(json.dumps(out, indent=1))
