"""Weight-only quantization of exported graphs to MatMulNBits (block-wise int8 or int4).

Measured on SmolLM2-135M: plain `quantize_dynamic` QInt8 agreed with fp32 on ~55% of next
tokens and per-channel QInt8 was garbage, while 8-bit MatMulNBits agreed on ~95% with int8
compute and ~98% with fp32 compute (7x slower). So every MatMul with constant weights becomes
MatMulNBits with int8 compute.

The block is 64 unless an export asks for another (`ExportOptions.block_size`, `replyrank export
--block-size`). With int8 compute the activations are quantized per block too, so a longer
block decodes faster and drifts further from fp32. Measured on SmolLM2-135M (8 candidates x 40
tokens, 2 threads, median of 8; agreement on 1,035 positions of chitchat text):

    block   top-1   mean KL   decode
    32      0.955   0.0055    1,474 ms
    64      0.967   0.0085    1,343 ms
    128     0.952   0.0138    1,279 ms
    256     0.917   0.0225    (fails the 0.92 / 0.02 gate)

64 keeps the KL at less than half the gate. A DPO-tuned generator, whose next-token
distributions are flatter, can need 32: the default bundle's adapter agreed on 0.946 of sampled
tokens at 64 and 0.958 at 32 (the gate is 0.95; export.validate).

Scorers are different: BERT-sized encoders over whole (comment, reply) pairs are compute-bound,
where ONNX Runtime's dynamic int8 MatMulInteger beats block-wise dequantization. Measured on an
all-MiniLM-L6-v2 discriminator, 8 pairs, 2 threads: fp32 63 ms, 8-bit MatMulNBits 73 ms, dynamic
QInt8 31 ms, with a max probability difference of 0.009 against fp32.

A tied LM head is exported as `MatMul(hidden, Transpose(embedding))`: its weight is not a
constant, so the quantizer would leave ~113 MB of fp32 to be read at every decode step. We
fold the Transpose into a constant first, so the head is quantized like every other layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 64  # the generator's MatMulNBits block unless an export asks for another (see above)
WEIGHTS_FILE = "model.onnx.data"  # external initializers, next to model.onnx


def fold_transposed_weights(model: onnx.ModelProto) -> int:
    """Replace `MatMul(x, Transpose(W))` (W an initializer) by `MatMul(x, W_t)`; returns how many."""
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        transpose = producers.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        name = f"{transpose.input[0]}_transposed"
        if name not in initializers:
            initializers[name] = numpy_helper.from_array(np.ascontiguousarray(np.transpose(weight, perm)), name)
            graph.initializer.append(initializers[name])
        node.input[1] = name
        folded += 1
    # drop Transpose nodes nobody reads any more
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "Transpose" or any(o in used for o in n.output if o != "")]
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return folded


def prune_lm_head(path: Path) -> bool:
    """Make the LM head compute the last position's logits only (`logits` becomes (batch, 1, vocab)); False where the graph has no such head.

    A prefill needs only the next token's logits, yet the exported head multiplies every prompt
    position by the vocabulary (SmolLM2: 49,152 x 576 per token) and returns them all. As
    onnxruntime-genai's builder does it with `prune_lm_head`, a Gather of the last position (and an
    Unsqueeze to keep the rank) goes between the final norm and the head; a decode step, one token
    long, computes the same as before. Only the graph file changes: its weights stay where they are.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    head = next((node for node in graph.node if "logits" in node.output), None)
    if head is None or head.op_type not in ("MatMul", "MatMulNBits"):
        return False
    hidden, last, axes = head.input[0], "/lm_head/prune/last", "/lm_head/prune/axes"
    graph.initializer.extend([numpy_helper.from_array(np.array(-1, dtype=np.int64), last), numpy_helper.from_array(np.array([1], dtype=np.int64), axes)])
    gather = onnx.helper.make_node("Gather", [hidden, last], ["/lm_head/prune/last_hidden"], name="/lm_head/prune/Gather", axis=1)
    unsqueeze = onnx.helper.make_node("Unsqueeze", ["/lm_head/prune/last_hidden", axes], ["/lm_head/prune/output_0"], name="/lm_head/prune/Unsqueeze")
    head.input[0] = "/lm_head/prune/output_0"
    at = list(graph.node).index(head)
    graph.node.insert(at, unsqueeze)
    graph.node.insert(at, gather)
    logits = next(output for output in graph.output if output.name == "logits")
    length = logits.type.tensor_type.shape.dim[1]
    length.ClearField("dim_param")
    length.dim_value = 1
    onnx.save(model, str(path))
    return True


def quantize_model(src: Path, dst: Path, scheme: str, block_size: int = BLOCK_SIZE) -> None:
    """Quantize every constant-weight MatMul of `src` to `scheme` ('int8' or 'int4') into `dst`."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    fold_transposed_weights(model)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,  # int8 activations in the kernel: the fast path on AVX2/AVX512-VNNI CPUs
        bits=BITS[scheme],
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantize_scorer(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of an encoder: int8 weights per output channel, activations quantized per call.

    Per channel, because per tensor lost too much on the two-head MiniLM scorer (measured on 64
    chat pairs against PyTorch: realism correlation 0.951, max abs diff 0.047, upvote logit
    correlation 0.970; per channel: 0.994 / 0.014 and 0.996).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def optimize_offline(path: Path) -> None:
    """Run ONNX Runtime's portable graph fusions once, at export, and save the weights beside the graph.

    EXTENDED stops short of the layout transforms that ENABLE_ALL may tie to the exporting CPU.
    The weights go to `model.onnx.data`, which ONNX Runtime memory-maps at load instead of
    parsing them out of one large protobuf: opening the SmolLM2 int8 generator took 0.20 s
    instead of 0.61-0.81 s, and a reply's peak RSS fell from ~630 MB to ~500 MB (measured here).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    staged = path.with_name("optimized.onnx")
    options.optimized_model_filepath = str(staged)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS_FILE)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    staged.replace(path)  # the weights file is named for the final graph, so only the graph moves
