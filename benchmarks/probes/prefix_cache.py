"""Prefill time with and without the prompt-prefix KV cache (`replyrank.generate`), on any bundle.

The bundle's generator is opened with its prompt template given a few-shot prefix of K example
exchanges (K from --few-shot), as issue #13's default bundle may carry. For each K: one warm-up,
then --runs alternating calls of `Generator.generate` with a full prefill and with the cached
prefix; medians of the prefill seconds it reports (the batch-1 forward pass over the prompt, what
`Result.timings_ms["prefill"]` shows). The tokens of both are checked to be equal.

    python benchmarks/probes/prefix_cache.py --bundle DIR [--few-shot 0 1 2 3] [--runs 50] [--threads 1] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace

import replyrank
from replyrank.bundle import Bundle
from replyrank.environment import cpu_model, package_versions
from replyrank.generate import GenerationOptions, Generator, candidate_rngs

COMMENT = "has anyone tried the pasta place near campus"
EXAMPLES = [
    ("what do you think about the new library in town", "i think it is great and the coffee is good too"),
    ("how many hours a week do you study for finals", "too many honestly, i need a break and some sleep"),
    ("does the gym open early on weekends this semester", "no idea, ask the front desk or check their website"),
    ("is the bus to the city running late again today", "yes, it was twenty minutes late this morning"),
    ("who is teaching intro to statistics next term", "the same professor as last year, she is really good"),
    ("any tips for finding a cheap room near campus", "check the housing board early, the good ones go fast"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--few-shot", type=int, nargs="+", default=[0, 1, 2, 3], help="example exchanges before the comment")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()

    bundle = Bundle.read(args.bundle)
    spec = bundle.generator
    options = GenerationOptions(candidates=1, max_new_tokens=1, temperature=0)
    rows = []
    for k in args.few_shot:
        prefix = "".join(f"comment: {a}\nreply: {b}\n" for a, b in (EXAMPLES * 4)[:k])
        template = prefix + spec.prompt_template
        try:
            generator = Generator(bundle.folder(spec), replace(spec, prompt_template=template), args.threads)
            prompt = generator.encode_prompt(COMMENT, options).ids
        except replyrank.ReplyrankError as error:  # a prefix longer than the generator's context
            print(f"few-shot {k}: skipped ({error})", file=sys.stderr)
            continue
        timings: dict[bool, list[float]] = {True: [], False: []}
        tokens = {}
        for reuse in (True, False):  # warm-up
            generator.generate(prompt, options, candidate_rngs(0, 1), reuse_prefix=reuse)
        for _ in range(args.runs):
            for reuse in (True, False):
                generations, prefill_s = generator.generate(prompt, options, candidate_rngs(0, 1), reuse_prefix=reuse)
                timings[reuse].append(prefill_s)
                tokens[reuse] = generations[0].token_ids
        full, cached = statistics.median(timings[False]) * 1e3, statistics.median(timings[True]) * 1e3
        rows.append({
            "few_shot": k, "prompt_tokens": len(prompt), "prefix_tokens": len(generator.prefix_ids),
            "prefilled_per_call_with_cache": len(prompt) - generator.cached_prefix_length(prompt),
            "prefill_ms_full": round(full, 3), "prefill_ms_cached": round(cached, 3), "saved_ms": round(full - cached, 3),
            "prefix_prefill_at_load_ms": round(generator.prefix_prefill_s * 1e3, 3), "tokens_equal": tokens[True] == tokens[False],
        })
        print(json.dumps(rows[-1]), file=sys.stderr)
    report = {
        "bundle": str(bundle.root), "architecture": spec.architecture, "kv_cache": spec.kv_cache, "quantization": bundle.quantization,
        "runs": args.runs, "threads": args.threads, "cpu": cpu_model(), "replyrank": replyrank.__version__,
        "packages": package_versions(["onnxruntime", "numpy", "tokenizers"]), "rows": rows,
    }
    print(f"{'few-shot':>8} {'prompt':>6} {'prefix':>6} {'full ms':>8} {'cached ms':>9} {'saved ms':>8}  tokens equal")
    for r in rows:
        print(f"{r['few_shot']:8} {r['prompt_tokens']:6} {r['prefix_tokens']:6} {r['prefill_ms_full']:8.3f} "
              f"{r['prefill_ms_cached']:9.3f} {r['saved_ms']:8.3f}  {r['tokens_equal']}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
