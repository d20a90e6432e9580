"""replyrank itself: the bundle as exported (`replyrank`), or an unquantized export of it (`replyrank-fp32`)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from .common import Generated, KernelClock, System, clock_sessions, job_options, onnx_step_bytes

PACKAGES = ["replyrank", "onnxruntime", "tokenizers", "numpy"]


def load(name: str, args: dict[str, Any]) -> System:
    """The bundle as exported: `Bot.reply` is the job; generator and scorers are also timed alone."""
    import replyrank
    from replyrank.bundle import DISCRIMINATOR, UPVOTES
    from replyrank.generate import GenerationOptions

    bot = replyrank.load(args["bundle"], threads=args["threads"])
    clock = KernelClock()
    clock_sessions(clock, [bot.generator.session, *(graph.session for graph in bot.scorers.graphs.values())])
    comment = args["comment"]
    base = job_options(args)

    def options(n: int, t: int, seed: int) -> GenerationOptions:
        return replace(base, candidates=n, min_new_tokens=t, max_new_tokens=t, seed=seed)

    def generate(n: int, t: int, seed: int) -> Generated:
        sample = bot.generator.sample(comment, options(n, t, seed))
        return Generated([g.text for g in sample.generations], [len(g.token_ids) for g in sample.generations], sample.prefill_s)

    def job(n: int, t: int, seed: int) -> dict[str, Any]:
        start, kernel = time.perf_counter(), clock.seconds
        result = bot.reply(comment, options(n, t, seed))
        total, kernel = time.perf_counter() - start, clock.seconds - kernel
        texts = [c.text for c in result.candidates]
        # the two scorers once more, each alone, outside the job's clock
        s0 = time.perf_counter()
        bot.scorers(comment, texts, [DISCRIMINATOR])
        s1 = time.perf_counter()
        bot.scorers(comment, texts, [UPVOTES])
        s2 = time.perf_counter()
        forced = all(c.finish_reason == "length" for c in result.candidates)
        return {
            "total_ms": total * 1e3,
            "kernel_ms": kernel * 1e3,  # the job's own session runs, not the scorers' timed-alone runs below
            "generate_ms": (result.timings_ms["prefill"] + result.timings_ms["decode"]),
            "prefill_ms": result.timings_ms["prefill"],
            "score_ms": result.timings_ms["score"],
            "discriminator_ms": (s1 - s0) * 1e3,
            "upvotes_ms": (s2 - s1) * 1e3,
            "new_tokens_min": t if forced else -1,
            "new_tokens_max": t if forced else -1,
            "texts": texts,
            "scored": sum(c.realism is not None for c in result.candidates),  # duplicates and empties skip scoring
        }

    prompt_ids = bot.generator.encode_prompt(comment, options(1, args["t"], 0)).ids
    layout = bot.bundle.validation.get("generator_layout") or {}
    kernels = f" ({layout['dynamic_int8']} MatMuls dynamic int8, {layout['matmul_nbits']} MatMulNBits)" if layout.get("dynamic_int8") else ""
    notes = [f"graph: {bot.bundle.generator.graph}", f"quantization: {bot.bundle.quantization}{kernels}"]
    if bot.generator.one_sequence:
        notes.append("decode: the N candidates as one sequence on the prompt's single cache (attention bias)")
    if bot.generator.top_candidates:
        notes.append("sampling: from the graph's top-k logits (TopK in the graph)")
    if bot.bundle.shared_scorer:
        notes.append("scorers: one graph with two heads, run once per job")
    if prompt_ids != args["prompt_ids"]:
        notes.append("prompt ids differ from the ones the peers were given")
    return System(
        generate,
        lambda texts: bot.scorers(comment, texts, [DISCRIMINATOR]),
        lambda texts: bot.scorers(comment, texts, [UPVOTES]),
        job=job,
        notes=notes + ["job = Bot.reply (tokenize, prefill once at batch 1, decode the N candidates together, score, select)",
                       "kernel time: the generator's and the scorers' session runs"],
        kernel=clock,
        step_bytes=onnx_step_bytes(bot.bundle.folder(bot.bundle.generator)),
    )
