"""The export's int8 quality gate on a generator adapter, at block 64 (the bundle's) and 32, without building a bundle.

python gate_check.py ADAPTER_DIR WORK_DIR   (the validation pairs are the default build's: 32 held-out chitchat turns)
"""
import json, random, sys
from pathlib import Path
from replyrank.export.assemble import DEPLOYMENT, export_generator
from replyrank.export.default import PROMPT, _split, generator_source
from replyrank.export.chitchat import load_turns
from replyrank.export.quantize import optimize_offline, prune_lm_head, quantize_model
from replyrank.export.validate import generator_quantized_vs_fp32
import shutil

adapter, work = Path(sys.argv[1]), Path(sys.argv[2])
work.mkdir(parents=True, exist_ok=True)
train_turns, test_turns = _split(load_turns(max_chars=200))  # as build_default_bundle draws them
rng = random.Random(0)
rng.shuffle(train_turns)
rng.shuffle(test_turns)
pairs = [(t.message, t.reply) for t in test_turns[:32]]
source = generator_source(work, adapter)
spec, _ = export_generator(source, work / "int8-64", work, "int8", PROMPT, sampling=DEPLOYMENT)
out = {"block 64": generator_quantized_vs_fp32(work / "generator-fp32", work / "int8-64", spec, pairs)}
b32 = work / "int8-32"
shutil.copytree(work / "int8-64", b32, ignore=shutil.ignore_patterns("model.onnx*"))
quantize_model(work / "generator-fp32" / "model.onnx", b32 / "model.onnx", "int8", block_size=32)
optimize_offline(b32 / "model.onnx"); prune_lm_head(b32 / "model.onnx")
out["block 32"] = generator_quantized_vs_fp32(work / "generator-fp32", b32, spec, pairs)
print(json.dumps(out, indent=1))
