"""4-bit / 8-bit mixes of the generator's MatMulNBits, each gated by KL and top-1 against fp32.

    python benchmarks/probes/mixed_precision.py --fp32 DIR --work DIR PLAN[:BLOCK[:ALGO]] ...   (one JSON line per plan)

DIR is the fp32 generator part as the export builds it (onnxruntime-genai's builder, before
quantization: `export.assemble.export_generator` leaves it in its work folder as generator-fp32).
Each plan quantizes it the way `export.quantize.quantize_model` does (tied head folded, symmetric
blocks, accuracy level 4), with the plan's MatMuls at 8 bits and the rest at 4, then measures it
with the export's own `generator_quantized_vs_fp32` on the default bundle's 32 held-out chat turns.

Plans: int8 (all 8-bit, today's export), mixed (onnxruntime-genai's `k_quant_mixed` choice, from
llama.cpp's use_more_bits: qkv and down_proj of the first and last eighth of the layers and of
every third between, and the LM head, at 8 bits), mlp4 (only the MLPs at 4 bits), last8 (only
the LM head at 8 bits). ALGO is rtn (ONNX Runtime's default quantizer, two passes) or kquant
(`KQuantWeightOnlyQuantConfig` with `customized_weight_config`, as the genai builder passes it).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import onnx

from replyrank.bundle import GeneratorSpec
from replyrank.export.assemble import DEPLOYMENT
from replyrank.export.chitchat import load_turns
from replyrank.export.default import PROMPT, _split
from replyrank.export.quantize import fold_transposed_weights, optimize_offline
from replyrank.export.validate import generator_quantized_vs_fp32


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of layers that keep more bits (the genai builder's k_quant_mixed takes it)."""
    return layer < layers / 8 or layer >= 7 * layers / 8 or (layer - round(layers / 8)) % 3 == 2


def eight_bit(plan: str, nodes: list[str], layers: int) -> set[str]:
    if plan == "int8":
        return set(nodes)
    if plan == "mixed":
        sensitive = {f"/model/layers.{i}/{part}/MatMul" for i in range(layers) if use_more_bits(i, layers)
                     for part in ("attn/qkv_proj", "mlp/down_proj")}
        return {n for n in nodes if n == "/lm_head/MatMul" or n in sensitive}
    if plan == "mlp4":
        return {n for n in nodes if "/mlp/" not in n}
    if plan == "last8":
        return {"/lm_head/MatMul"}
    raise SystemExit(f"unknown plan {plan}")


def quantize(fp32: Path, out: Path, plan: str, block: int, algo: str) -> int:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig, KQuantWeightOnlyQuantConfig, MatMulNBitsQuantizer,
    )

    model = onnx.load(str(fp32 / "model.onnx"))
    fold_transposed_weights(model)
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    layers = 1 + max(int(n.split("/model/layers.")[1].split("/")[0]) for n in nodes if n.startswith("/model/layers."))
    eight = eight_bit(plan, nodes, layers)
    if algo == "kquant":
        custom = {n: {"bits": 8 if n in eight else 4} for n in nodes}
        quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=True, accuracy_level=4,
                                         algo_config=KQuantWeightOnlyQuantConfig(customized_weight_config=custom))
        quantizer.process()
        model = quantizer.model.model
    else:  # nodes_to_include adds to the op types rather than narrowing them, so the 4-bit pass excludes the 8-bit ones
        for bits, skip in ((4, eight), (8, set())):
            if bits == 4 and len(skip) == len(nodes):
                continue
            config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=bits)
            quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=sorted(skip), algo_config=config)
            quantizer.process()
            model = quantizer.model.model
    out.mkdir(parents=True)
    onnx.save(model, str(out / "model.onnx"))
    optimize_offline(out / "model.onnx")
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        shutil.copy(fp32 / name, out / name)
    return len(eight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("plans", nargs="+")
    args = parser.parse_args()
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(args.fp32)
    # the default bundle's generator spec (SmolLM2: EOS <|im_end|> = 2, no BOS, GroupQueryAttention's in-place cache)
    spec = GeneratorSpec(path="generator", prompt_template=PROMPT, eos_token_ids=(2,), context_length=config.max_position_embeddings,
                         kv_cache="in-place")
    train, test = _split(load_turns(max_chars=200))
    rng = random.Random(0)
    rng.shuffle(train)
    rng.shuffle(test)
    pairs = [(t.message, t.reply) for t in test[:32]]
    for item in args.plans:
        plan, block, algo = (item.split(":") + ["64", "rtn"][item.count(":"):])[:3]
        out = args.work / item.replace(":", "-")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        eight = quantize(args.fp32, out, plan, int(block), algo)
        took = time.perf_counter() - start
        quality = generator_quantized_vs_fp32(args.fp32, out, spec, pairs, DEPLOYMENT)
        size = sum(p.stat().st_size for p in out.glob("model.onnx*"))
        print(json.dumps({"plan": plan, "block": int(block), "algo": algo, "eight_bit_matmuls": eight, "model_mb": round(size / 1e6, 1),
                          **quality, "quantize_s": round(took, 1)}), flush=True)


if __name__ == "__main__":
    main()
