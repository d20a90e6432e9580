"""A fused GPT-2 graph: GroupQueryAttention with the KV cache written in place, built from the weights.

optimum's `text-generation-with-past` export of GPT-2 is unfused (attention as ~40 small ops a
layer, a cache that is concatenated every step), and its projections are `Gemm` nodes, which the
MatMulNBits quantizer skips: the int8 bundle kept fp32 weights. ONNX Runtime's GPT-2 optimizer
(`onnxruntime.transformers.optimizer.optimize_model(model_type="gpt2")`) fuses LayerNorm and Gelu
in that graph but not its attention: `FusionGptAttention` matches only the graph of ORT's own
`models/gpt2/convert_to_onnx.py`, whose `Attention` op still concatenates a `(2, batch, heads,
length, head_dim)` past.

So this module writes the graph the way onnxruntime-genai's model builder writes a Llama-family
one (`builders/base.py`): the packed QKV projection into `GroupQueryAttention` (`num_heads ==
kv_num_heads`, no rotary; `seqlens_k` and `total_sequence_length` from the attention mask),
`SkipLayerNormalization` for each residual add and LayerNorm, `FastGelu` (GPT-2's tanh "gelu_new")
for the MLP, absolute position embeddings gathered by `position_ids`, and a tied LM head as a
constant MatMul. Its inputs and outputs are the ones the runtime already drives for the Llama
graph (`past_key_values.{i}.key/value` in, `present.{i}.*` out, `"kv_cache": "in-place"`), so
`replyrank.generate` needs no branch for it. Every MatMul has a constant weight, so the quantizer
turns all of them, the head included, into MatMulNBits.

`check_parity` is the contract of the export: the graph's prefill and a cached decode step against
PyTorch's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .convert import WEIGHTS_FILE, ExportError, copy_part_files

# fp32 ONNX against PyTorch fp32: max abs logit difference allowed, relative to the logits' spread
PARITY_TOLERANCE = 1e-3


def supports(config: Any) -> bool:
    """A plain GPT-2 (the architecture and options this builder writes); other variants go through optimum."""
    return (
        config.model_type == "gpt2"
        and config.activation_function in ("gelu_new", "gelu_pytorch_tanh")
        and not config.scale_attn_by_inverse_layer_idx
        and not config.reorder_and_upcast_attn
        and not getattr(config, "add_cross_attention", False)
        and config.n_inner in (None, 4 * config.n_embd)
        and config.n_embd % config.n_head == 0
    )


def build(folder: Path, out_dir: Path) -> bool:
    """Write the fused fp32 graph of the GPT-2 in `folder` to `out_dir/model.onnx` (+ part files), checked by `check_parity`;
    False if it is not a GPT-2 this module builds."""
    import torch
    from transformers import AutoConfig, GPT2LMHeadModel

    config = AutoConfig.from_pretrained(folder)
    if not supports(config):
        return False
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    weights = {name: tensor.detach().numpy() for name, tensor in model.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    graph = gpt2_graph(weights, config.n_layer, config.n_head, config.layer_norm_epsilon)
    onnx.save(graph, str(out_dir / "model.onnx"), save_as_external_data=True, location=WEIGHTS_FILE, size_threshold=1024)
    copy_part_files(folder, out_dir)
    check_parity(out_dir, folder)
    return True


def gpt2_graph(weights: dict[str, np.ndarray], layers: int, heads: int, epsilon: float) -> onnx.ModelProto:
    """The ONNX model of a GPT2LMHeadModel's `state_dict` (as numpy): see the module docstring."""
    vocab, hidden = weights["transformer.wte.weight"].shape
    head_dim = hidden // heads
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, outputs: int = 1, domain: str = "", **attributes: Any) -> list[str]:
        names = [f"{name}/output_{i}" for i in range(outputs)]
        nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain, **attributes))
        return names

    def linear(x: str, prefix: str, name: str) -> str:
        # transformers' Conv1D keeps its weight as (in, out): the MatMul's B as it is
        product = node("MatMul", [x, constant(f"{prefix}.weight", weights[f"{prefix}.weight"])], f"{name}/MatMul")[0]
        return node("Add", [product, constant(f"{prefix}.bias", weights[f"{prefix}.bias"])], f"{name}/Add")[0]

    def skip_norm(x: str, skip: str, prefix: str, name: str) -> tuple[str, str]:
        """LayerNorm(x + skip) and x + skip, one SkipLayerNormalization."""
        gamma, beta = constant(f"{prefix}.weight", weights[f"{prefix}.weight"]), constant(f"{prefix}.bias", weights[f"{prefix}.bias"])
        normed, summed = f"{name}/output_0", f"{name}/output_3"
        nodes.append(helper.make_node("SkipLayerNormalization", [x, skip, gamma, beta], [normed, "", "", summed], name=name,
                                      domain="com.microsoft", epsilon=epsilon))
        return normed, summed

    one = constant("/model/constants/one", np.array([1], dtype=np.int64))
    index_one = constant("/model/constants/index_one", np.array(1, dtype=np.int64))
    # GroupQueryAttention reads the cache's valid lengths from these, as onnxruntime-genai's graphs compute them
    mask_sum = node("ReduceSum", ["attention_mask", one], "/model/mask/ReduceSum", keepdims=0)[0]
    seqlens = node("Cast", [node("Sub", [mask_sum, one], "/model/mask/Sub")[0]], "/model/mask/seqlens_k", to=TensorProto.INT32)[0]
    total = node("Gather", [node("Shape", ["attention_mask"], "/model/mask/Shape")[0], index_one], "/model/mask/Gather", axis=0)[0]
    total = node("Cast", [total], "/model/mask/total_seq_len", to=TensorProto.INT32)[0]

    tokens = node("Gather", [constant("transformer.wte.weight", weights["transformer.wte.weight"]), "input_ids"], "/model/embed/wte")[0]
    positions = node("Gather", [constant("transformer.wpe.weight", weights["transformer.wpe.weight"]), "position_ids"], "/model/embed/wpe")[0]
    residual = node("Add", [tokens, positions], "/model/embed/Add")[0]
    ln_1 = "transformer.h.0.ln_1"
    x = node("LayerNormalization", [residual, constant(f"{ln_1}.weight", weights[f"{ln_1}.weight"]),
                                    constant(f"{ln_1}.bias", weights[f"{ln_1}.bias"])], "/model/layers.0/ln_1", axis=-1, epsilon=epsilon)[0]
    for i in range(layers):
        prefix, name = f"transformer.h.{i}", f"/model/layers.{i}"
        qkv = linear(x, f"{prefix}.attn.c_attn", f"{name}/attn/qkv")
        attention, _, _ = node(
            "GroupQueryAttention", [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total],
            f"{name}/attn/GroupQueryAttention", outputs=3, domain="com.microsoft",
            num_heads=heads, kv_num_heads=heads, scale=float(1 / np.sqrt(head_dim)), do_rotary=0, local_window_size=-1,
        )
        nodes[-1].output[1:] = [f"present.{i}.key", f"present.{i}.value"]
        x, residual = skip_norm(linear(attention, f"{prefix}.attn.c_proj", f"{name}/attn/out"), residual, f"{prefix}.ln_2", f"{name}/ln_2")
        fc = node("MatMul", [x, constant(f"{prefix}.mlp.c_fc.weight", weights[f"{prefix}.mlp.c_fc.weight"])], f"{name}/mlp/fc/MatMul")[0]
        gelu = node("FastGelu", [fc, constant(f"{prefix}.mlp.c_fc.bias", weights[f"{prefix}.mlp.c_fc.bias"])], f"{name}/mlp/FastGelu",
                    domain="com.microsoft")[0]
        mlp = linear(gelu, f"{prefix}.mlp.c_proj", f"{name}/mlp/proj")
        norm = f"transformer.h.{i + 1}.ln_1" if i + 1 < layers else "transformer.ln_f"
        x, residual = skip_norm(mlp, residual, norm, f"/model/layers.{i + 1}/ln_1" if i + 1 < layers else "/model/ln_f")
    # the tied head as a constant (vocab, hidden) -> (hidden, vocab), so it is quantized like every other MatMul
    head = constant("lm_head.weight_transposed", weights.get("lm_head.weight", weights["transformer.wte.weight"]).T)
    nodes.append(helper.make_node("MatMul", [x, head], ["logits"], name="/lm_head/MatMul"))

    cache_in = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    cache_out = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        *[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch_size", heads, "past_sequence_length", head_dim]) for n in cache_in],
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", vocab]),
        *[helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch_size", heads, "total_sequence_length", head_dim]) for n in cache_out],
    ]
    graph = helper.make_graph(nodes, "gpt2", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], producer_name="replyrank")


def check_parity(model_dir: Path, torch_folder: Path, length: int = 24, seed: int = 0) -> dict[str, float]:
    """Max abs logit difference of the fp32 graph against PyTorch: a prefill of `length` random tokens, then a decode
    step into a cache with room (written in place, as the runtime runs it); an ExportError past PARITY_TOLERANCE."""
    import onnxruntime as ort
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(torch_folder, dtype=torch.float32).eval()
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, size=(1, length + 1))
    with torch.no_grad():
        reference = model(torch.from_numpy(ids)).logits[0].numpy()
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    layers, heads = model.config.n_layer, model.config.n_head
    empty = np.zeros((1, heads, 0, model.config.n_embd // heads), dtype=np.float32)
    names = [f"{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    feed = {"input_ids": ids[:, :length], "attention_mask": np.ones((1, length), np.int64), "position_ids": np.arange(length)[None]}
    prefill, *presents = session.run(None, {**feed, **{f"past_key_values.{n}": empty for n in names}})
    # a buffer one token longer than the prompt, bound as both past and present: the in-place path
    buffers = {n: np.concatenate([p, np.zeros_like(p[:, :, :1])], axis=2) for n, p in zip(names, presents)}
    binding = session.io_binding()
    step = {"input_ids": ids[:, length:], "attention_mask": np.ones((1, length + 1), np.int64), "position_ids": np.array([[length]])}
    for name, value in step.items():
        binding.bind_cpu_input(name, value)
    binding.bind_output("logits", "cpu")
    values = {n: ort.OrtValue.ortvalue_from_numpy(b) for n, b in buffers.items()}
    for n, value in values.items():
        binding.bind_ortvalue_input(f"past_key_values.{n}", value)
        binding.bind_ortvalue_output(f"present.{n}", value)
    session.run_with_iobinding(binding)
    decode = binding.get_outputs()[0].numpy()
    scale = float(np.abs(reference).max()) or 1.0
    result = {
        "prefill_max_abs_logit_diff": float(np.abs(prefill[0] - reference[:length]).max()),
        "decode_max_abs_logit_diff": float(np.abs(decode[0, -1] - reference[length]).max()),
        "logit_scale": scale,
    }
    if max(result["prefill_max_abs_logit_diff"], result["decode_max_abs_logit_diff"]) > PARITY_TOLERANCE * scale:
        raise ExportError(f"the fused GPT-2 graph disagrees with PyTorch: {result}")
    return result
