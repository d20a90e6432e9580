"""Candidates decoded as one sequence on the prompt's cache (export.quantize.decode_as_one_sequence, generate.Candidates)
compute what one batch row per candidate computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import replyrank
from replyrank.generate import Candidates, GenerationOptions

COMMENT = "has anyone tried the pasta place near campus"


def step_logits(generator, prompt: list[int], tokens: np.ndarray, one_sequence: bool, drop_at: int) -> list[np.ndarray]:
    """Each step's logits for `tokens` (rows, steps); row 1 stops after step `drop_at`."""
    generator.one_sequence = one_sequence
    logits, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    rows, steps = tokens.shape
    candidates = Candidates(generator, len(prompt), cache, rows, steps)
    assert candidates.one_sequence is one_sequence
    out = []
    for step in range(steps):
        if step == drop_at:
            candidates.keep([p for p, row in enumerate(candidates.rows) if row != 1])
        out.append(candidates.step(tokens[candidates.rows, step]).copy())
    return out


@pytest.mark.parametrize("bundle", ["llama_fp32_bundle", "gpt2_fp32_bundle"])
def test_one_sequence_gives_the_logits_of_batch_rows(bundle, request):
    generator = replyrank.load(request.getfixturevalue(bundle)).generator
    assert generator.one_sequence
    prompt = generator.encode_prompt(COMMENT, GenerationOptions()).ids
    tokens = np.random.default_rng(0).integers(5, generator.vocab, (4, 6))
    together = step_logits(generator, prompt, tokens, True, drop_at=3)
    apart = step_logits(generator, prompt, tokens, False, drop_at=3)
    assert [a.shape for a in together] == [(4, generator.vocab)] * 3 + [(3, generator.vocab)] * 3
    for a, b in zip(together, apart):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_the_prompt_is_held_once(llama_bundle):
    generator = replyrank.load(llama_bundle).generator
    prompt = generator.encode_prompt(COMMENT, GenerationOptions()).ids
    _, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    buffer = next(iter(Candidates(generator, len(prompt), cache, 5, 8).buffers.values()))
    assert buffer.shape == (1, generator.kv_heads, len(prompt) + 5 * 8, generator.head_dim)
    # a sequence longer than the model's context (its rotary tables) falls back to one batch row per candidate
    rows = generator.context_length // 8
    candidates = Candidates(generator, len(prompt), cache, rows, 8)
    assert not candidates.one_sequence and next(iter(candidates.buffers.values())).shape[0] == rows


@pytest.mark.parametrize("bundle", ["llama_bundle", "gpt2_bundle", "llama_dynamic_bundle"])
def test_bundle_graphs_give_every_attention_the_bias(bundle, request):
    graph = onnx.load(str(Path(request.getfixturevalue(bundle)) / "generator" / "model.onnx"), load_external_data=False).graph
    assert {"attention_bias", "position_ids", "logits_to_keep"} <= {i.name for i in graph.input}
    attention = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    assert attention and all(node.input[10] == "attention_bias" for node in attention)
    rotary = [node for node in attention if any(a.name == "do_rotary" and a.i for a in node.attribute)]
    assert all(node.input[9] == "position_ids" for node in rotary)
