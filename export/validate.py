"""The numbers that say an export is faithful, written into the bundle's manifest.

- generator, fp32 ONNX vs PyTorch: max abs logit difference for the prefill and for one decode
  step that reads the cache;
- generator, quantized vs fp32 ONNX, run as the deployment runs it: each real comment's prompt
  prefilled in one pass on top of the template prefix's cache, then the candidates that the fp32
  graph sampled under the deployment's settings, decoded together one step at a time (both graphs
  fed the same tokens; a dynamic-int8 graph quantizes each call's activations with one scale, so
  the prefill's tokens and the candidates' rows share it): mean KL(fp32 || quantized), the
  agreement of the two sampling distributions (1 - total variation: the share of draws on which
  the two agree under the best coupling; with greedy decoding, top-1 agreement), and next-token
  top-1 agreement, over every candidate's every step;
- each scorer, quantized ONNX vs PyTorch: Pearson correlation and max abs difference of scores.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from replyrank.bundle import GeneratorSpec, ScorerSpec
from replyrank.generate import Candidates, GenerationOptions, Generator, candidate_rngs, sampling_distribution
from replyrank.score import PairGraph, score_pairs

# Quality gates: a quantized part below these fails the export unless the user overrides it.
# The generator's gate is on what a user gets: the mean KL, and the agreement of the distributions
# that the deployment settings draw from. Top-1 agreement is reported, not gated: it is the greedy
# case, and it mostly measures how flat a model's next-token distributions are. A tuned small
# model's top-1 flips under 8-bit weights are mostly near-ties, which the deployment's sampling
# draws either way, so a low top-1 agreement can come with a tiny mean KL.
GATES = {"generator_sampling_agreement": 0.95, "generator_mean_kl": 0.02, "scorer_correlation": 0.95}
# A scorer passes with correlation >= scorer_correlation, or, when its scores barely vary, with a
# max abs difference within its tolerance (reported beside it).


def token_sequences(generator: Generator, pairs: list[tuple[str, str]], limit: int = 16) -> list[list[int]]:
    """The prompt of each of the first `limit` pairs' comments, followed by (up to 32 tokens of) its reply."""
    options = GenerationOptions(max_new_tokens=8, max_comment_tokens=96)
    sequences = []
    for comment, reply in pairs[:limit]:
        prompt = generator.encode_prompt(comment, options).ids
        sequences.append(prompt + generator.tokenizer.encode(reply, add_special_tokens=False).ids[:32])
    return sequences


def candidate_logits(generator: Generator, prompt: list[int], tokens: np.ndarray) -> np.ndarray:
    """Next-token logits (rows, steps, vocab) of candidates `tokens` (rows, steps) after `prompt`, as `Generator.generate`
    computes them: the prompt prefilled once from the prefix cache, then every row one step at a time, together."""
    cached = generator.cached_prefix_length(prompt)
    past = generator.prefix_cache if cached and generator.prefix_cache is not None else generator.empty_cache(1)
    logits, cache = generator.forward(np.array([prompt[cached:]], dtype=np.int64), cached, past)
    rows, steps = tokens.shape
    candidates = Candidates(generator, len(prompt), cache, rows, steps)
    out = [np.repeat(logits[:, -1], rows, axis=0)]
    for step in range(steps - 1):
        out.append(candidates.step(tokens[:, step]).copy())
    return np.stack(out, axis=1)


def generator_vs_torch(model_dir: Path, spec: GeneratorSpec, torch_folder: Path, pairs: list[tuple[str, str]]) -> dict:
    """Max abs logit difference, fp32 ONNX vs PyTorch, for the prefill (every position it returns) and a cached decode step."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(torch_folder, dtype=torch.float32).eval()
    generator = Generator(model_dir, replace(spec, prefix_cache=None))  # the fp32 folder: no stored prefix cache there
    prefill, decode = 0.0, 0.0
    for ids in token_sequences(generator, pairs, limit=4):
        with torch.no_grad():
            reference = model(torch.tensor([ids])).logits[0].numpy()
        logits, cache = generator.forward(np.array([ids[:-1]]), 0, generator.empty_cache(1))
        returned = logits.shape[1]  # every position, or the last one only
        prefill = max(prefill, float(np.abs(logits[0] - reference[len(ids) - 1 - returned : len(ids) - 1]).max()))
        step, _ = generator.forward(np.array([ids[-1:]]), len(ids) - 1, cache)
        decode = max(decode, float(np.abs(step[0, -1] - reference[-1]).max()))
    return {"prefill_max_abs_logit_diff": prefill, "decode_max_abs_logit_diff": decode}


def sampling_agreement(p_logits: np.ndarray, q_logits: np.ndarray, sampling: GenerationOptions) -> np.ndarray:
    """Per row: sum over tokens of min(p, q), p and q what `sampling` draws from for each set of logits (1 - total variation)."""
    p_ids, p = sampling_distribution(p_logits, sampling)
    q_ids, q = sampling_distribution(q_logits, sampling)
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    rows = []
    for row in range(len(p)):
        _, in_p, in_q = np.intersect1d(p_ids[row], q_ids[row], return_indices=True)
        rows.append(np.minimum(p[row, in_p], q[row, in_q]).sum())
    return np.array(rows)


def generator_quantized_vs_fp32(
    fp32_dir: Path, quantized_dir: Path, spec: GeneratorSpec, pairs: list[tuple[str, str]], sampling: GenerationOptions,
    steps: int = 16, limit: int = 16,
) -> dict:
    """Mean KL, agreement under `sampling` and top-1 agreement of the quantized generator against fp32, over the
    `sampling.candidates` candidates of `steps` tokens that fp32 samples for each of the first `limit` comments."""
    reference, quantized = Generator(fp32_dir, replace(spec, prefix_cache=None)), Generator(quantized_dir, spec)
    options = replace(sampling, min_new_tokens=steps, max_new_tokens=steps, max_comment_tokens=96)
    agree, sampled, kl, positions = 0, 0.0, 0.0, 0
    for seed, (comment, _) in enumerate(pairs[:limit]):
        prompt = reference.encode_prompt(comment, options).ids
        generations, _ = reference.generate(prompt, options, candidate_rngs(seed, options.candidates))
        tokens = np.array([g.token_ids for g in generations], dtype=np.int64)
        p_logits = candidate_logits(reference, prompt, tokens)
        q_logits = candidate_logits(quantized, prompt, tokens)
        p_logits, q_logits = p_logits.reshape(-1, p_logits.shape[-1]), q_logits.reshape(-1, q_logits.shape[-1])
        agree += int((p_logits.argmax(-1) == q_logits.argmax(-1)).sum())
        sampled += float(sampling_agreement(p_logits, q_logits, sampling).sum())
        p_logits, q_logits = p_logits.astype(np.float64), q_logits.astype(np.float64)
        log_p = p_logits - np.logaddexp.reduce(p_logits, axis=-1, keepdims=True)
        log_q = q_logits - np.logaddexp.reduce(q_logits, axis=-1, keepdims=True)
        kl += float((np.exp(log_p) * (log_p - log_q)).sum())
        positions += len(p_logits)
    return {
        "sampling_agreement": sampled / positions,
        "sampling": {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p},
        "mean_kl": kl / positions,
        "top1_agreement": agree / positions,
        "positions": positions,
        "candidates": options.candidates,
        "steps": steps,
    }


def scorer_vs_torch(model_dir: Path, spec: ScorerSpec, torch_folder: Path, pairs: list[tuple[str, str]]) -> dict:
    """Correlation and max abs difference of the exported scorer's scores against PyTorch's."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(torch_folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(torch_folder)
    comments, replies = [c for c, _ in pairs], [r for _, r in pairs]
    with torch.no_grad():
        batch = tokenizer(comments, replies, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
        logits = model(**batch).logits.double()
    if spec.kind == "regression":
        reference = logits[:, 0] * spec.output_scale + spec.output_offset
    else:
        reference = logits.softmax(-1)[:, spec.label]
    return compare_scores(model_dir, spec, reference.numpy(), pairs)


def pair_model_vs_torch(model_dir: Path, specs: dict[str, ScorerSpec], model, tokenizer, pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """Each head of a two-head scorer graph (export.rankers) against the PyTorch model it came from."""
    from replyrank.filters import normalize_text

    from .rankers import predict

    normalized = [(normalize_text(c), normalize_text(r)) for c, r in pairs]
    realism, upvotes = predict(model, tokenizer, normalized, max_length=next(iter(specs.values())).max_length)
    reference = {"probability": realism, "regression": upvotes}
    return {name: compare_scores(model_dir, spec, reference[spec.kind].astype(np.float64), pairs) for name, spec in specs.items()}


def compare_scores(model_dir: Path, spec: ScorerSpec, reference: np.ndarray, pairs: list[tuple[str, str]]) -> dict:
    """Correlation and max abs difference of the exported graph's scores (one pair per run, as a reply sees them) against `reference`."""
    graph = PairGraph(model_dir, spec)
    scores = np.concatenate([score_pairs(graph, [spec], [pair])[0] for pair in pairs])
    # the error allowed when scores barely vary: 0.02 of a probability, 5% of a regressor's target spread
    return similarity_check(scores, reference, 0.02 if spec.kind == "probability" else 0.05 * spec.output_scale)


def similarity_check(scores: np.ndarray, reference: np.ndarray, tolerance: float) -> dict:
    """Correlation and max abs difference of exported `scores` against `reference`, with the error allowed when they
    barely vary (then no correlation can show): what the export's gate reads."""
    spread = reference.std() > 1e-9 and scores.std() > 1e-9
    correlation = float(np.corrcoef(scores, reference)[0, 1]) if spread else 1.0 if np.allclose(scores, reference, atol=1e-3) else 0.0
    return {"correlation": correlation, "max_abs_diff": float(np.abs(scores - reference).max()), "tolerance": tolerance, "pairs": len(scores)}
