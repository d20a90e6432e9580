"""The harness that measures one system of the reply-job benchmark, in a process of its own.

    python benchmarks/harness.py SYSTEM --mode serve --json-args '{...}'     (bench.py starts it)

PyTorch's and ONNX Runtime's thread pools fight when they share a process, so `bench.py` starts
this script once per system. In `--mode serve` it loads the system and prints one JSON line (the
load's figures, or the error), then answers requests on stdin, one JSON line each, with one JSON
line on stdout (everything the libraries print goes to stderr): `{"job": SEED}` runs the reply
job once and answers its timings; `{"rest": true}` measures the decode steps and the scaling
curves, answers them and exits. So `bench.py` can interleave the systems' timed jobs, one system's
run after the other's, while each stays loaded in its own process: a machine whose speed drifts
during the benchmark slows every system alike instead of the one whose block of runs it hits.

Each system is a small module in `systems/` whose `load(name, args)` returns the same three things
(`systems.common.System`): sample N candidates of exactly T new tokens from the prompt's token ids,
and score (comment, reply) pairs with the discriminator and with the upvote model. The measuring
code here is shared, so every system gets the same warm-up, the same runs and the same clock
(`perf_counter`), as onnxruntime-genai's `benchmark_e2e.py` does it.

A system module may also define `prepare(args)`: a conversion it needs first (optimum's ONNX
export, CTranslate2's int8 model, the genai builder's int4 model), run in `--mode prepare`, a
process of its own, and cached under benchmarks/.cache/, so the measured process only loads; and
`preload(args)`, run before the load clock starts, whose result is added to the arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from dataclasses import asdict
from types import ModuleType
from typing import Any, Callable, TextIO

from replyrank.environment import package_versions
from systems.common import System

# system name -> its module in systems/
SYSTEMS = {
    "replyrank": "replyrank", "replyrank-fp32": "replyrank", "transformers": "transformers", "optimum": "optimum",
    "genai": "genai", "ctranslate2": "ctranslate2", "llamacpp": "llamacpp", "llamacpp-batched": "llamacpp",
    "llamacpp-batched-q4_0": "llamacpp", "llamacpp-batched-q8_0": "llamacpp",
}


def system_module(name: str) -> ModuleType:
    return importlib.import_module(f"systems.{SYSTEMS[name]}")


def peak_rss_mb() -> float:
    """This process's peak resident set so far.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child started from a big
    parent (vfork shares its memory) would report the parent's peak instead of its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; the fallback elsewhere


def timed_job(system: System, n: int, t: int, seed: int) -> dict[str, Any]:
    """The reply job once, with the milliseconds it spent inside the runtimes' compute calls where the system counts them."""
    before = system.kernel.seconds if system.kernel is not None else None
    row = run_job(system, n, t, seed)
    if before is not None and system.kernel is not None:
        row.setdefault("kernel_ms", (system.kernel.seconds - before) * 1e3)  # a system's own job may count its own
        row["outside_kernels_ms"] = row["total_ms"] - row["kernel_ms"]
    return row


def run_job(system: System, n: int, t: int, seed: int) -> dict[str, Any]:
    """The reply job once: generate N × T, then the scorers; milliseconds per stage."""
    if system.job is not None:
        return system.job(n, t, seed)
    start = time.perf_counter()
    generated = system.generate(n, t, seed)
    generated_at = time.perf_counter()
    system.discriminator(generated.texts)
    scored_disc = time.perf_counter()
    system.upvotes(generated.texts)
    end = time.perf_counter()
    row = {
        "total_ms": (end - start) * 1e3,
        "generate_ms": (generated_at - start) * 1e3,
        "score_ms": (end - generated_at) * 1e3,
        "discriminator_ms": (scored_disc - generated_at) * 1e3,
        "upvotes_ms": (end - scored_disc) * 1e3,
        "new_tokens_min": min(generated.new_tokens),
        "new_tokens_max": max(generated.new_tokens),
        "texts": generated.texts,
    }
    if generated.prefill_s is not None:
        row["prefill_ms"] = generated.prefill_s * 1e3
    return row


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def job_summary(runs: list[dict[str, Any]], t: int) -> dict[str, Any]:
    """Min, median and max of each stage over the timed jobs `runs` (rows of `timed_job`), and whether every candidate had T tokens."""
    stages = sorted({key for run in runs for key in run if key.endswith("_ms")})
    result: dict[str, Any] = {stage: summary([run[stage] for run in runs if stage in run]) for stage in stages}
    result["new_tokens"] = [min(run["new_tokens_min"] for run in runs), max(run["new_tokens_max"] for run in runs)]
    result["forced_length_ok"] = result["new_tokens"] == [t, t]
    if all("kernel_ms" in run for run in runs):
        # the share of the job's wall time outside the compute calls: medians of each run's own share
        result["outside_kernels_share"] = statistics.median(run["outside_kernels_ms"] / run["total_ms"] for run in runs)
    if any("scored" in run for run in runs):
        result["scored_pairs_min"] = min(run["scored"] for run in runs)
    result["sample_texts"] = runs[-1]["texts"][:3]  # to see that the system wrote text, not noise
    return result


def measure_steps(system: System, args: dict[str, Any]) -> dict[str, Any]:
    """Prefill and per-step decode, from the difference of T and 1 new tokens (works for every system).

    prefill = generating 1 token at N=1 (prompt pass + one sample); decode per step at batch N =
    (median time for T tokens - median time for 1 token) / (T - 1).
    """
    t = args["decode_t"]
    out: dict[str, Any] = {"t": t, "decode_ms_per_step": {}, "prefill_reported_ms": {}}
    for n in args["decode_ns"]:
        system.generate(n, t, seed=20_000)  # warm-up at this batch size
        one, full, reported = [], [], []
        for i in range(args["runs"]):
            start = time.perf_counter()
            first = system.generate(n, 1, seed=i)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            system.generate(n, t, seed=i)
            full.append(time.perf_counter() - start)
            if first.prefill_s is not None:
                reported.append(first.prefill_s)
        out["decode_ms_per_step"][str(n)] = (statistics.median(full) - statistics.median(one)) / (t - 1) * 1e3
        out.setdefault("first_token_ms", {})[str(n)] = statistics.median(one) * 1e3
        if reported:
            out["prefill_reported_ms"][str(n)] = statistics.median(reported) * 1e3
    out["prefill_ms"] = out["first_token_ms"].get("1")
    return out


def measure_scaling(system: System, args: dict[str, Any]) -> dict[str, Any]:
    """Job latency (generate + score) vs N at T, and vs T at N: one warm-up, then the median of `scaling_runs`, at each point."""
    def median_ms(n: int, t: int) -> float:
        timed_job(system, n, t, seed=40_000)  # a new shape: first-call allocations are not the steady state
        return statistics.median(timed_job(system, n, t, seed=30_000 + i)["total_ms"] for i in range(args["scaling_runs"]))

    return {
        "vs_n": {"t": args["t"], "points": {str(n): median_ms(n, args["t"]) for n in args["scaling_ns"]}},
        "vs_t": {"n": args["n"], "points": {str(t): median_ms(args["n"], t) for t in args["scaling_ts"]}},
    }


def section(result: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    """Run one part of the measurement; a failure is recorded there and the other parts still run."""
    try:
        result[name] = work()
    except Exception as error:  # any library's failure is a result to report, not a crash
        result[name] = {"error": f"{type(error).__name__}: {error}"}
        traceback.print_exc()


def load_system(name: str, args: dict[str, Any]) -> tuple[System | None, dict[str, Any]]:
    """The loaded system (None where it failed) and what its load reports: versions, load time, RSS, notes."""
    result: dict[str, Any] = {"system": name}
    start = time.perf_counter()
    try:
        module = system_module(name)
        result["versions"] = package_versions(module.PACKAGES)
        if hasattr(module, "preload"):
            args.update(module.preload(args))
            start = time.perf_counter()
        system: System = module.load(name, {**args, "system": name})
    except Exception as error:
        traceback.print_exc()
        return None, {**result, "error": f"load: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}
    result["load_s"] = time.perf_counter() - start
    result["rss_after_load_mb"] = _current_rss_mb()
    result["notes"] = system.notes
    if system.step_bytes is not None:
        result["step_bytes"] = asdict(system.step_bytes)
    return system, result


def job(system: System, args: dict[str, Any], seed: int) -> dict[str, Any]:
    """One reply job at the benchmark's N and T; a failure is an answer with an error, not a crash."""
    try:
        return timed_job(system, args["n"], args["t"], seed)
    except Exception as error:
        traceback.print_exc()
        return {"error": f"{type(error).__name__}: {error}"}


def rest(system: System, args: dict[str, Any]) -> dict[str, Any]:
    """What follows the timed jobs: peak RSS so far, the decode steps, the scaling curves, peak RSS after everything."""
    result: dict[str, Any] = {"peak_rss_job_mb": peak_rss_mb()}
    if args["decode_ns"]:
        section(result, "steps", lambda: measure_steps(system, args))
    if args["scaling_ns"] or args["scaling_ts"]:
        section(result, "scaling", lambda: measure_scaling(system, args))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def serve(name: str, args: dict[str, Any], requests: TextIO, answers: TextIO) -> None:
    """Load the system, answer its load, then one answer per request line until `rest` or the end of input."""
    def answer(result: dict[str, Any]) -> None:
        answers.write(json.dumps(result) + "\n")
        answers.flush()

    system, loaded = load_system(name, args)
    answer(loaded)
    if system is None:
        return
    for line in requests:
        request = json.loads(line)
        if "job" in request:
            answer(job(system, args, int(request["job"])))
        elif request.get("rest"):
            answer(rest(system, args))
            return


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def prepare(name: str, args: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        module = system_module(name)
        folder = module.prepare({**args, "system": name}) if hasattr(module, "prepare") else None
    except Exception as error:
        traceback.print_exc()
        return {"system": name, "error": f"prepare: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}
    return {"system": name, "prepared": str(folder) if folder else None, "prepare_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--json-args", required=True, help="the settings bench.py passes, as one JSON object")
    parser.add_argument("--mode", choices=("prepare", "serve"), default="serve")
    options = parser.parse_args(argv)
    # stdout carries the JSON lines; whatever the libraries print goes to stderr
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    args = json.loads(options.json_args)
    if options.mode == "prepare":
        answers.write(json.dumps(prepare(options.system, args)) + "\n")
        answers.flush()
    else:
        serve(options.system, args, sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
