"""The reply job under different ONNX Runtime session options, side by side in one process.

Each variant is a bot whose sessions get extra config entries (`session.intra_op.*` ...); the
variants run interleaved, job after job, so a change of the machine's speed hits them alike. The
job is bench.py's: N candidates of exactly T tokens, then both scorers (`Bot.reply`); also N = 1.
`--busy` runs a Python busy loop beside it (one core taken), to see a variant under load.

    python benchmarks/probes/session_options.py '{"off": {"session.intra_op.allow_spinning": 0},
        "spin 5 us": {"session.intra_op.allow_spinning": 1, "session.intra_op.spin_duration_us": 5}}' [--runs 7] [--busy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnxruntime as ort

import replyrank
import replyrank.sessions
from replyrank.generate import GenerationOptions
from replyrank.sessions import create_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the job's comment is bench.py's
from bench import COMMENT  # noqa: E402


def bot_with(bundle: str, entries: dict[str, object]) -> replyrank.Bot:
    """A bot whose three sessions have create_session's options with `entries` set last (they win)."""

    def session(path, threads=None, spin=True):  # create_session's signature
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 2
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.force_spinning_stop", "1")
        for key, value in entries.items():
            options.add_session_config_entry(key, str(value))
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    replyrank.sessions.create_session = session  # what open_part calls
    try:
        return replyrank.load(bundle, threads=2)
    finally:
        replyrank.sessions.create_session = create_session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", help="JSON: name -> {config key: value}")
    parser.add_argument("--bundle", default=os.path.expanduser("~/.cache/replyrank/default-bundle"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--t", type=int, default=32)
    parser.add_argument("--busy", action="store_true", help="a busy loop on one core beside the runs")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    bots = {name: bot_with(args.bundle, entries) for name, entries in variants.items()}
    options = GenerationOptions(candidates=args.n, max_new_tokens=args.t, min_new_tokens=args.t, temperature=0.7, top_k=40)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        load_start = os.getloadavg()
        for bot in bots.values():
            bot.reply(COMMENT, replace(options, seed=10_000))  # warm-up
        job: dict[str, list[float]] = {name: [] for name in bots}
        single: dict[str, list[float]] = {name: [] for name in bots}
        for seed in range(args.runs):
            for name, bot in bots.items():
                start = time.perf_counter()
                bot.reply(COMMENT, replace(options, seed=seed))
                job[name].append((time.perf_counter() - start) * 1e3)
                start = time.perf_counter()
                bot.reply(COMMENT, replace(options, candidates=1, seed=seed))
                single[name].append((time.perf_counter() - start) * 1e3)
    finally:
        if busy is not None:
            busy.kill()
    print(json.dumps({"load_average_start": load_start, "load_average_end": os.getloadavg(), "busy_loop": args.busy, "runs": args.runs,
                      "job_ms_median": {n: statistics.median(v) for n, v in job.items()},
                      "n1_job_ms_median": {n: statistics.median(v) for n, v in single.items()}, "variants": variants}, indent=1))


if __name__ == "__main__":
    main()
