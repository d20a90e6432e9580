"""Time one MatMulNBits op per decode shape: bits, block, accuracy level, M."""
import time, sys, numpy as np, onnx, onnxruntime as ort
from onnx import helper, TensorProto, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate": (576, 1536), "down": (1536, 576), "head": (576, 49152)}
def model(K, N, bits, block, acc):
    W = np.random.default_rng(0).normal(0, 0.02, (K, N)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])],
        [numpy_helper.from_array(W, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q = MatMulNBitsQuantizer(m, algo_config=DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=acc, bits=bits))
    q.process()
    return q.model.model.SerializeToString()
def sess(b):
    o = ort.SessionOptions(); o.intra_op_num_threads = 2; o.inter_op_num_threads = 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(b, o, providers=["CPUExecutionProvider"])
import logging; logging.disable(logging.INFO)
configs = [(8, 64, 4), (8, 128, 4), (8, 32, 4), (4, 64, 4), (4, 32, 4), (4, 128, 4), (8, 64, 0), (8, 64, 3), (8, 64, 2)]
if len(sys.argv) > 1: configs = [tuple(map(int, c.split(","))) for c in sys.argv[1:]]
for bits, block, acc in configs:
    row = []
    for M in (1, 8):
        total = 0
        for name, (K, N) in SHAPES.items():
            s = sess(model(K, N, bits, block, acc)); x = np.random.rand(M, K).astype(np.float32)
            for _ in range(5): s.run(None, {"x": x})
            n = 50; t = time.perf_counter()
            for _ in range(n): s.run(None, {"x": x})
            ms = (time.perf_counter() - t) / n * 1e3
            mult = 1 if name == "head" else 30 * (2 if name == "gate" else 1)
            total += ms * mult
            row.append(f"{name}={ms*1e3:.0f}us")
        row.append(f"M={M}: model-sum {total:.1f} ms")
    print(f"bits {bits} block {block} acc {acc}: ", " ".join(row), flush=True)
