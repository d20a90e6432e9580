"""Quantization of exported graphs (the generator's MatMuls to 8-bit weights, or 4-bit; the scorers' to dynamic int8),
and the generator-graph edits the runtime's decode loop relies on (`decode_as_one_sequence`, `prune_lm_head`).

The generator's int8 layout has two kernels, chosen per MatMul:

- **dynamic int8** (`DynamicQuantizeMatMul`: per-column int8 weights, the activation quantized to
  uint8 with one scale per call, MLAS's int8 GEMM) for the projections fed by an RMS norm (q/k/v,
  gate, up) and the attention output projection: its cost barely grows with the rows, so a decode
  step of many candidates costs little more than one (`benchmarks/probes/matmul_kernels.py` times
  both kernels). One scale per call only holds where no channel dwarfs the others, so the
  activations are first **smoothed** (SmoothQuant, Xiao et al. 2023): channel j of a norm's output
  is divided by s_j = max|x_j|^a / max|W_j|^(1-a) and row j of every weight it feeds is multiplied
  by it, folded into the norm's weight, so the fp32 graph computes the same. The ranges come from
  real texts (`Calibration`), leaving out the template's prefix, whose cache the bundle ships from
  the fp32 graph (`replyrank.bundle.PREFIX_CACHE`): its first token carries the attention sink's
  massive activations, which one per-call scale cannot share with anything.
- **MatMulNBits** (block-wise int8 weights, int8 activations per block of the row) for the rest:
  the MLP's down projection, the most sensitive of the body (its input, SwiGLU's product, is
  smoothed too, the factor moved into the up projection's columns), and the LM head, which a
  per-call scale cannot hold.

Without `Calibration` (or for int4) every MatMul is MatMulNBits, and so is a model on which the
dynamic layout misses the export's gate (`export.assemble` quantizes it again weight-only and
records why). MatMulNBits' block is `BLOCK_SIZE` unless an export asks for another
(`ExportOptions.block_size`, `replyrank export --block-size`): with int8 compute the activations
are quantized per block too, so a longer block decodes faster and drifts further from fp32. Plain
per-tensor `quantize_dynamic` of every MatMul drifts too far from fp32 for the gate.

Scorers are different: BERT-sized encoders over whole (comment, reply) pairs are compute-bound,
where ONNX Runtime's dynamic int8 MatMulInteger is faster than block-wise dequantization.

A tied LM head is exported as `MatMul(hidden, Transpose(embedding))`: its weight is not a
constant, so the quantizer would leave the whole embedding table in fp32, read at every decode
step. We fold the Transpose into a constant first, so the head is quantized like every other layer.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .convert import WEIGHTS_FILE

if TYPE_CHECKING:
    import onnxruntime as ort

BITS = {"int8": 8, "int4": 4}
BLOCK_SIZE = 64  # the generator's MatMulNBits block unless an export asks for another (see above)
# SmoothQuant's migration strength a: how much of an activation channel's range moves into the weights it feeds
# (0: none, 1: all); the gate's agreement is flat around this value on the default generator
SMOOTHING_ALPHA = 0.7
RMS_NORMS = ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization")


@dataclass(frozen=True)
class Calibration:
    """Token ids of real prompts with their replies, whose activation ranges the smoothing is fitted to.

    skip: leading positions left out of the ranges (the template prefix, which the bundle's prefix cache holds).
    """

    sequences: list[list[int]]
    skip: int = 0


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


def decode_as_one_sequence(path: Path) -> bool:
    """Give every GroupQueryAttention of the graph at `path` an attention bias and explicit positions (graph inputs
    `attention_bias` (batch, 1, length, total length) and `position_ids`), so that a decode step can run all
    candidates as one sequence (`replyrank.generate.Candidates`); False where the graph has no GroupQueryAttention.

    The prompt's cache is then held and read once for all candidates, instead of once per candidate: each
    candidate's new token attends to the prompt and to its own earlier tokens, the bias hiding the others', and
    the rotary embedding takes the position from `position_ids`. llama.cpp's batched decoding shares the prompt's
    cells the same way (`llama_memory_seq_cp`). The longer the prompt and the more candidates, the more this
    saves. Only the graph file changes.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    attention = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    if not attention:
        return False
    declared = {i.name for i in graph.input}
    if "position_ids" not in declared:
        graph.input.append(helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["batch_size", "sequence_length"]))
    graph.input.append(helper.make_tensor_value_info(
        "attention_bias", onnx.TensorProto.FLOAT, ["batch_size", 1, "sequence_length", "total_sequence_length"]))
    for node in attention:
        rotary = any(a.name == "do_rotary" and a.i for a in node.attribute)
        node.input.extend([""] * (11 - len(node.input)))
        node.input[9], node.input[10] = ("position_ids" if rotary else ""), "attention_bias"  # inputs 9 and 10: ORT >= 1.22
    onnx.save(model, str(path))
    return True


def prune_lm_head(path: Path) -> bool:
    """Make the LM head compute the last `logits_to_keep` positions' logits only (a graph input, (1,) int64; `logits`
    becomes (batch, logits_to_keep, vocab)), and return each one's `top_k` largest logits and their ids too (input
    `top_k`, outputs `top_logits` and `top_ids`, most likely first, equal logits in id order: ONNX TopK's order, which
    is `replyrank.generate.top_k`'s); False where the graph has no such head.

    A prefill needs only the next token's logits (1), yet the exported head multiplies every prompt
    position by the vocabulary (SmolLM2: 49,152 x 576 per token) and returns them all; a decode step
    of candidates as one sequence (`decode_as_one_sequence`) needs every position's. As
    onnxruntime-genai's builder prunes the head, a Slice of the hidden states goes between the final
    norm and the head (transformers' `logits_to_keep` is the same idea). Only the graph file changes:
    its weights stay where they are.

    The top logits spare the sampling loop a search of the whole vocabulary in numpy, on logits the CPU's
    caches no longer hold by then: ONNX Runtime's TopK runs while they are still warm.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    head = next((node for node in graph.node if "logits" in node.output), None)
    if head is None or head.op_type not in ("MatMul", "MatMulNBits"):
        return False
    graph.input.append(helper.make_tensor_value_info("logits_to_keep", onnx.TensorProto.INT64, [1]))
    end, axis = "/lm_head/prune/end", "/lm_head/prune/axis"
    graph.initializer.extend([numpy_helper.from_array(np.array([np.iinfo(np.int64).max]), end), numpy_helper.from_array(np.array([1]), axis)])
    negate = helper.make_node("Neg", ["logits_to_keep"], ["/lm_head/prune/start"], name="/lm_head/prune/Neg")
    last = helper.make_node("Slice", [head.input[0], "/lm_head/prune/start", end, axis], ["/lm_head/prune/output_0"], name="/lm_head/prune/Slice")
    head.input[0] = "/lm_head/prune/output_0"
    at = list(graph.node).index(head)
    graph.node.insert(at, last)
    graph.node.insert(at, negate)
    logits = next(output for output in graph.output if output.name == "logits").type.tensor_type
    logits.shape.dim[1].ClearField("dim_value")
    logits.shape.dim[1].dim_param = "logits_to_keep"
    graph.input.append(helper.make_tensor_value_info("top_k", onnx.TensorProto.INT64, [1]))
    graph.node.append(helper.make_node("TopK", ["logits", "top_k"], ["top_logits", "top_ids"], name="/lm_head/TopK", axis=-1))
    shape = [logits.shape.dim[0].dim_param or logits.shape.dim[0].dim_value, "logits_to_keep", "top_k"]
    graph.output.extend([helper.make_tensor_value_info("top_logits", logits.elem_type, shape),
                         helper.make_tensor_value_info("top_ids", onnx.TensorProto.INT64, shape)])
    onnx.save(model, str(path))
    return True


def weighted_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """MatMuls with a constant weight, grouped by the activation they read."""
    constants = {i.name for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in constants:
            groups.setdefault(node.input[0], []).append(node)
    return groups


def _readers(model: onnx.ModelProto) -> dict[str, int]:
    """How many node inputs read each name."""
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    return readers


def _norm_weight(norm: onnx.NodeProto) -> str:
    """The scale (gamma) input of an RMS norm node."""
    return norm.input[2] if norm.op_type == "SkipSimplifiedLayerNormalization" else norm.input[1]


def dynamic_layout(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(activations to smooth, activations whose MatMuls go dynamic): RMS-norm outputs and, beside them, attention outputs
    (dynamic) and SwiGLU products (smoothed, left to MatMulNBits); nothing for a graph without RMS norms (GPT-2's)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    readers = _readers(model)
    smoothed, dynamic = [], []
    for x, nodes in weighted_matmuls(model).items():
        producer = producers.get(x)
        # the LM head stays MatMulNBits; a weight read elsewhere too (a tied table) is left as it is
        if producer is None or any("logits" in node.output or readers[node.input[1]] > 1 for node in nodes):
            continue
        if producer.op_type in RMS_NORMS and producer.output[0] == x and readers[_norm_weight(producer)] == 1:
            smoothed.append(x)
            dynamic.append(x)
        elif producer.op_type == "GroupQueryAttention":
            dynamic.append(x)
        elif _gated_projection(producer, producers, readers) is not None:
            smoothed.append(x)
    return (smoothed, dynamic) if any(producers[x].op_type in RMS_NORMS for x in smoothed) else ([], [])


def _gated_projection(mul: onnx.NodeProto, producers: dict[str, onnx.NodeProto], readers: dict[str, int]) -> onnx.NodeProto | None:
    """The up projection of a SwiGLU `act(gate) * up`, where a factor on the product can move into its weight's columns."""
    if mul.op_type != "Mul":
        return None
    for name in mul.input:
        up = producers.get(name)
        if up is not None and up.op_type == "MatMul" and "up_proj" in up.name and readers.get(up.input[1]) == 1 and readers.get(name) == 1:
            return up
    return None


def activation_ranges(path: Path, names: list[str], calibration: Calibration) -> dict[str, np.ndarray]:
    """Per channel, the largest |value| of each named activation over the calibration texts (the fp32 graph at `path`,
    one pass each)."""
    session = _probe_session(path, names)
    ranges: dict[str, np.ndarray] = {}
    for ids in calibration.sequences:
        feed = {"input_ids": np.array([ids], dtype=np.int64)}
        for arg in session.get_inputs():
            if arg.name == "attention_mask":
                feed[arg.name] = np.ones((1, len(ids)), dtype=np.int64)
            elif arg.name == "position_ids":
                feed[arg.name] = np.arange(len(ids), dtype=np.int64)[None]
            elif arg.name == "attention_bias":  # causal alone
                feed[arg.name] = np.zeros((1, 1, len(ids), len(ids)), dtype=np.float32)
            elif arg.name.startswith("past_key_values."):
                feed[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), dtype=np.float32)
        for name, value in zip(names, session.run(names, feed)):
            peak = np.abs(value[:, calibration.skip :].reshape(-1, value.shape[-1])).max(0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


def _probe_session(path: Path, names: list[str]) -> ort.InferenceSession:
    """A session of the graph at `path` that also returns the activations `names`. The probe graph is written beside it
    without weights and reads the graph's own weights file, so the quantizer's copy of the model is not copied twice
    more (into a probe and its serialized bytes)."""
    import onnxruntime as ort

    probe = onnx.load(str(path), load_external_data=False)
    probe.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named activation
    handle, probe_path = tempfile.mkstemp(suffix=".onnx", dir=path.parent)  # beside the weights its graph names
    os.close(handle)
    try:
        onnx.save(probe, probe_path)
        return ort.InferenceSession(probe_path, options, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(probe_path)


def smooth(model: onnx.ModelProto, ranges: dict[str, np.ndarray], alpha: float = SMOOTHING_ALPHA) -> None:
    """SmoothQuant: divide channel j of each RMS norm's output by s_j (in the norm's weight) and multiply row j of the
    weights it feeds by s_j (a SwiGLU product's factor goes into the up projection's columns); the fp32 graph computes
    the same. `ranges`: `dynamic_layout`'s activations to smooth, whose weights nothing else reads."""
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    readers = _readers(model)

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name]).astype(np.float32)

    groups = weighted_matmuls(model)
    for x, peak in ranges.items():
        weight_peak = np.max([np.abs(array(node.input[1])).max(1) for node in groups[x]], axis=0)
        s = np.clip(np.maximum(peak, 1e-5) ** alpha / np.maximum(weight_peak, 1e-5) ** (1 - alpha), 1e-2, 1e3).astype(np.float32)
        producer = producers[x]
        if producer.op_type in RMS_NORMS:
            gamma = _norm_weight(producer)
            initializers[gamma].CopyFrom(numpy_helper.from_array(array(gamma) / s, gamma))
        else:
            up = _gated_projection(producer, producers, readers).input[1]
            initializers[up].CopyFrom(numpy_helper.from_array(array(up) / s, up))
        for node in groups[x]:
            name = node.input[1]
            initializers[name].CopyFrom(numpy_helper.from_array(array(name) * s[:, None], name))


def to_dynamic_int8(model: onnx.ModelProto, activations: list[str]) -> int:
    """Every constant-weight MatMul reading one of `activations` becomes DynamicQuantizeMatMul with symmetric
    per-column int8 weights; returns how many."""
    initializers = {i.name: i for i in model.graph.initializer}
    wanted = set(activations)
    nodes, replaced = [], 0
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[0] not in wanted or node.input[1] not in initializers:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        scale = (np.maximum(np.abs(weight).max(0), 1e-12) / 127).astype(np.float32)
        quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        base = node.input[1]
        model.graph.initializer.extend([numpy_helper.from_array(quantized, f"{base}_int8"), numpy_helper.from_array(scale, f"{base}_scale")])
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], f"{base}_int8", f"{base}_scale"], list(node.output), name=node.name, domain="com.microsoft"))
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    read = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def _dynamic_int8(model: onnx.ModelProto, src: Path, calibration: Calibration) -> dict:
    """Smooth the model's norm-fed activations on the calibration texts (ranges measured on the graph at `src`) and make
    the MatMuls that read them dynamic int8, in place; what the layout records of it."""
    smoothed, dynamic = dynamic_layout(model)
    layout = {}
    if smoothed:
        smooth(model, activation_ranges(src, smoothed, calibration))  # folding transposed weights changes no activation
        layout.update(smoothing_alpha=SMOOTHING_ALPHA, calibration_texts=len(calibration.sequences))
    layout["dynamic_int8"] = to_dynamic_int8(model, dynamic)
    return layout


def quantize_model(src: Path, dst: Path, scheme: str, block_size: int = BLOCK_SIZE, calibration: Calibration | None = None) -> dict:
    """Quantize every constant-weight MatMul of `src` to `scheme` ('int8' or 'int4') into `dst`; returns the layout.

    int8 with a `calibration`: the smoothed dynamic-int8 layout above where the graph has RMS norms; MatMulNBits elsewhere.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(src))
    fold_transposed_weights(model)
    layout = {"dynamic_int8": 0, "smoothing_alpha": None, "calibration_texts": 0}
    if scheme == "int8" and calibration is not None:
        layout.update(_dynamic_int8(model, src, calibration))
        # a protobuf model keeps every initializer it replaced until the whole model is freed: the quantizer gets the
        # model as saved, without them
        with tempfile.TemporaryDirectory(prefix="replyrank-quantize-") as tmp:
            staged = Path(tmp) / "model.onnx"
            onnx.save(model, str(staged), save_as_external_data=True, location=WEIGHTS_FILE, size_threshold=1024)
            del model
            model = onnx.load(str(staged))
    layout["matmul_nbits"] = sum(len(nodes) for nodes in weighted_matmuls(model).values())
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
    return layout


def quantize_scorer(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of an encoder: int8 weights per output channel, activations quantized per call.

    Per channel, because one scale per weight tensor moves the two-head MiniLM scorer's scores too far from
    PyTorch's for the export's scorer gate (`validate.GATES`). On an x86 CPU without int8 dot products
    (AVX512-VNNI / AVX-VNNI) ONNX Runtime's u8 x s8 GEMM sums pairs of products in 16 bits, which saturates
    with full 8-bit weights; there the weights keep 7 bits (`reduce_range`), as ONNX Runtime's docs advise.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from replyrank.environment import int8_dot_product

    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=int8_dot_product() is False)


def optimize_offline(path: Path) -> None:
    """Run ONNX Runtime's portable graph fusions once, at export, and save the weights beside the graph.

    EXTENDED stops short of the layout transforms that ENABLE_ALL may tie to the exporting CPU.
    The weights go to `model.onnx.data`, which ONNX Runtime memory-maps at load instead of
    parsing them out of one large protobuf: a bundle opens faster and a reply holds less memory.
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
