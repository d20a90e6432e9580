# Round five: gate and up projections as two MatMulNBits or one of twice the width (+ Split), 30 MLP layers, M = 1 and 8.
import time, numpy as np, onnx, onnxruntime as ort, logging
from onnx import helper, TensorProto, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
logging.disable(logging.INFO)
K, N, L = 576, 1536, 30
rng = np.random.default_rng(0)
def build(fused):
    nodes, inits = [], []
    x = "x"
    for l in range(L):
        Wg = rng.normal(0, .02, (K, N)).astype(np.float32); Wu = rng.normal(0, .02, (K, N)).astype(np.float32); Wd = rng.normal(0, .02, (N, K)).astype(np.float32)
        if fused:
            inits.append(numpy_helper.from_array(np.concatenate([Wg, Wu], 1), f"Wgu{l}"))
            nodes += [helper.make_node("MatMul", [x, f"Wgu{l}"], [f"gu{l}"]),
                      helper.make_node("Split", [f"gu{l}"], [f"g{l}", f"u{l}"], axis=-1, num_outputs=2)]
        else:
            inits += [numpy_helper.from_array(Wg, f"Wg{l}"), numpy_helper.from_array(Wu, f"Wu{l}")]
            nodes += [helper.make_node("MatMul", [x, f"Wg{l}"], [f"g{l}"]), helper.make_node("MatMul", [x, f"Wu{l}"], [f"u{l}"])]
        inits.append(numpy_helper.from_array(Wd, f"Wd{l}"))
        nodes += [helper.make_node("Sigmoid", [f"g{l}"], [f"s{l}"]), helper.make_node("Mul", [f"g{l}", f"s{l}"], [f"a{l}"]),
                  helper.make_node("Mul", [f"a{l}", f"u{l}"], [f"m{l}"]), helper.make_node("MatMul", [f"m{l}", f"Wd{l}"], [f"y{l}"])]
        x = f"y{l}"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])], [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["M", K])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    q = MatMulNBitsQuantizer(m, algo_config=DefaultWeightOnlyQuantConfig(block_size=64, is_symmetric=True, accuracy_level=4, bits=8)); q.process()
    o = ort.SessionOptions(); o.intra_op_num_threads = 2
    o.add_session_config_entry("session.intra_op.allow_spinning", "1"); o.add_session_config_entry("session.intra_op.spin_duration_us", "5")
    return ort.InferenceSession(q.model.model.SerializeToString(), o, providers=["CPUExecutionProvider"])
S = {f: build(f) for f in (False, True)}
for M in (1, 8):
    x = rng.random((M, K)).astype(np.float32)
    ts = {f: [] for f in S}
    for f, s in S.items(): s.run(None, {"x": x})
    for _ in range(40):
        for f, s in S.items():
            t = time.perf_counter(); s.run(None, {"x": x}); ts[f].append(time.perf_counter() - t)
    print(M, {("fused" if f else "separate"): round(np.median(v) * 1e3, 2) for f, v in ts.items()})
