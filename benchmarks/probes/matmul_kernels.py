"""The two int8 MatMul kernels of the generator's layout (export.quantize), at 1 and 8 rows, on SmolLM2's shapes.

Each graph holds `--layers` MatMuls of one shape reading the same input (the LM head: one), with random
weights, quantized as the export quantizes them: MatMulNBits (8-bit, block 32, int8 compute) or
`export.quantize.to_dynamic_int8` (DynamicQuantizeMatMul, per-column int8 weights). Medians of --runs
session runs, 2 threads, spinning off; the ms are per graph, so per layer is ms / layers.

    python benchmarks/probes/matmul_kernels.py [--runs 200] [--layers 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

from replyrank.environment import cpu_model, int8_dot_product
from replyrank.export.quantize import to_dynamic_int8

SHAPES = {"gate/up 576x1536": (576, 1536), "down 1536x576": (1536, 576), "LM head 576x49152": (576, 49152)}


def graph(k: int, n: int, layers: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), f"w{i}") for i in range(layers)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"m{i}") for i in range(layers)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(layers)]
    body = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])], outputs, weights)
    return helper.make_model(body, opset_imports=[helper.make_opsetid("", 17)])


def nbits(model: onnx.ModelProto) -> onnx.ModelProto:
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    return quantizer.model.model


def dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    to_dynamic_int8(model, ["x"])
    return model


def median_ms(model: onnx.ModelProto, rows: int, k: int, runs: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
    for _ in range(10):
        session.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = {"cpu": cpu_model(), "int8_dot_product": int8_dot_product(), "runs": args.runs, "shapes": {}}
    for label, (k, n) in SHAPES.items():
        layers = 1 if "head" in label else args.layers
        entry = results["shapes"][label] = {"layers": layers}
        for kernel, quantize in (("MatMulNBits", nbits), ("DynamicQuantizeMatMul", dynamic)):
            model = quantize(graph(k, n, layers))
            entry[kernel] = {f"rows {rows}": round(median_ms(model, rows, k, args.runs), 3) for rows in (1, 8)}
        print(f"{label} x{layers}: " + "; ".join(f"{kernel} {v['rows 1']} / {v['rows 8']} ms" for kernel, v in entry.items() if kernel != "layers"), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
