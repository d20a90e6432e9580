"""Soak test: many `Bot.reply` calls in one process, watching resident memory and open files.

A leak shows as a curve that keeps rising after warm-up (ONNX Runtime's allocations, the
tokenizers' caches and Python's heap settle in the first ~100 calls). The comments cycle through
lengths of 1 to ~400 words, so every prompt shape the generator sees comes back again and again:
memory that tracks the variety of shapes (an arena keeping the largest of each) stops growing,
memory that tracks the number of calls does not.

    python benchmarks/soak.py --bundle ~/.cache/replyrank/default-bundle --calls 300 --every 25 --out benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import onnxruntime
import psutil

import replyrank
from replyrank.environment import cpu_model

from portable import checkout, portable

WORDS = (
    "has anyone tried the pasta place near campus i think it is great and the coffee is good too "
    "how many hours a week do you study for finals no idea ask the front desk or check their website"
).split()
LENGTHS = (1, 3, 8, 20, 50, 120, 250, 400)  # words, cycled through call after call


@dataclass
class Sample:
    """Where the process stood after `call` replies."""

    call: int
    rss_mb: float
    fds: int
    seconds: float


def comment(call: int) -> str:
    """The comment of call number `call`: a length from LENGTHS, words shifted so prompts differ."""
    n = LENGTHS[call % len(LENGTHS)]
    return " ".join(WORDS[(call + i) % len(WORDS)] for i in range(n))


def open_fds(process: psutil.Process) -> int:
    return process.num_fds() if hasattr(process, "num_fds") else process.num_handles()


def soak(
    bot: replyrank.Bot,
    calls: int,
    every: int = 50,
    candidates: int = 4,
    max_new_tokens: int = 16,
    on_sample: Callable[[Sample], None] | None = None,
) -> list[Sample]:
    """Make `calls` replies with `bot`; sample RSS and open file descriptors at call 0 and every `every` calls."""
    process = psutil.Process()
    start = time.perf_counter()
    samples = [Sample(0, process.memory_info().rss / 2**20, open_fds(process), 0.0)]
    if on_sample:
        on_sample(samples[0])
    for call in range(1, calls + 1):
        bot.reply(comment(call), candidates=candidates, max_new_tokens=max_new_tokens, seed=call)
        if call % every == 0 or call == calls:
            samples.append(Sample(call, process.memory_info().rss / 2**20, open_fds(process), time.perf_counter() - start))
            if on_sample:
                on_sample(samples[-1])
    return samples


def at_call(samples: list[Sample], call: int) -> Sample:
    """The first sample taken at or after `call` (the last one if the run was shorter)."""
    return next((s for s in samples if s.call >= call), samples[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="Bundle folder to load.")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--every", type=int, default=50, help="Sample memory and open files every this many calls.")
    parser.add_argument("--warmup", type=int, default=100, help="Growth is measured from this call to the last.")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/soak.json")
    args = parser.parse_args()

    process = psutil.Process()
    fds_before_load = open_fds(process)
    bot = replyrank.load(args.bundle, threads=args.threads)
    print(f"{'call':>6}  {'rss MiB':>8}  {'fds':>4}  {'s':>7}", file=sys.stderr)
    samples = soak(
        bot, args.calls, args.every, args.candidates, args.max_new_tokens,
        on_sample=lambda s: print(f"{s.call:6d}  {s.rss_mb:8.1f}  {s.fds:4d}  {s.seconds:7.1f}", file=sys.stderr),
    )
    warm, last = at_call(samples, args.warmup), samples[-1]
    report = {
        "command": " ".join(["python benchmarks/soak.py", *sys.argv[1:]]),
        **checkout(),
        "bundle": str(Path(args.bundle).resolve()),
        "calls": last.call,
        "settings": {"candidates": args.candidates, "max_new_tokens": args.max_new_tokens, "threads": args.threads,
                     "comment_words": list(LENGTHS), "sample_every": args.every, "warmup_calls": args.warmup},
        "samples": [asdict(s) for s in samples],
        "rss_mb": [round(s.rss_mb, 1) for s in samples],
        "rss_growth_after_warmup_mb": round(last.rss_mb - warm.rss_mb, 1),
        "rss_growth_after_warmup": {"from_call": warm.call, "to_call": last.call, "from_mb": round(warm.rss_mb, 1), "to_mb": round(last.rss_mb, 1)},
        "fds": {"before_load": fds_before_load, "before_calls": samples[0].fds, "after": last.fds},
        "seconds": round(last.seconds, 1),
        "ms_per_call": round(1e3 * last.seconds / max(last.call, 1), 1),
        "versions": {"replyrank": replyrank.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(report, indent=2)) + "\n")
    print(
        f"{report['calls']} calls in {report['seconds']} s; RSS {warm.rss_mb:.1f} MiB at call {warm.call} -> "
        f"{last.rss_mb:.1f} MiB at call {last.call} ({report['rss_growth_after_warmup_mb']:+.1f} MiB); "
        f"fds {samples[0].fds} -> {last.fds}; wrote {out}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
