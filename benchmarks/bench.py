"""The reply job, side by side: replyrank against the runtimes a user could take instead.

    bash benchmarks/setup_peers.sh        # once: matplotlib, and venvs for ctranslate2 / llama-cpp-python
    python benchmarks/bench.py [--bundle DIR] [--fp32-bundle DIR] [--systems replyrank transformers ...]
                               [--n 8] [--t 32] [--passes 4] [--runs 5] [--threads 2] [--out benchmarks/results]

The job: one fixed comment; N candidates of exactly T new tokens each (min = max new tokens, EOS
never ends a candidate), sampled with the bundle's deployment settings (its manifest's
`generator.sampling`: temperature 0.7, top-k 40 for bundles of today); then the bundle's scorers
(realism, upvotes, relevance) on the N (comment, reply) pairs. Every system gets the same prompt token ids, the
same settings and the same thread count, in a process of its own (`harness.py`, one module per
system in `systems/`), warmed up once, then timed with `perf_counter`; medians are what is
compared, as onnxruntime-genai's `benchmark_e2e.py` does it.

The timed jobs are interleaved: every system is loaded in its own process first, then in each of
`--passes` passes the systems take turns, one run each (A B A B ..., `--runs` runs apiece, the
first system rotating from pass to pass). On a shared machine whose speed drifts, runs taken one
system's block after the other's compare the drift, not the systems; taken in turns, both see the
same machine. A pass's ratio is a system's median over replyrank's median in that pass; reported
per pass, and their median with the spread (min-max, interquartile range) over the passes.

Also measured, per system after the passes: load time, prefill, decode ms per step at N = 1, 8,
16, scoring, peak RSS, job latency vs N and vs T (plots), and the memory-bandwidth floor of a
decode step. Writes bench.json, bench.md and the plots into `--out` (`report.py`).

`run(argv)` does all of it and returns the results; `replyrank bench` runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from harness import SYSTEMS, job_summary, system_module
from portable import checkout, portable
from replyrank.bundle import PARTS, PER_CALL_OPTIONS, Bundle, GeneratorSpec
from replyrank.environment import cpu_model, package_versions
from report import log, markdown, plot

HERE = Path(__file__).resolve().parent
ENVS = {"ctranslate2": "ctranslate2", **{name: "llamacpp" for name in SYSTEMS if name.startswith("llamacpp")}}  # systems that run in benchmarks/.envs/<name>
# A realistic comment: ~64 tokens with SmolLM2's tokenizer (the prompt template adds its own).
COMMENT = (
    "I moved to a new city for work three months ago and I still barely know anyone here. I tried a climbing "
    "gym and a board game meetup, but everyone already seems to have their own group of friends. How long did "
    "it take you to actually feel at home somewhere new, and what helped the most?"
)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.py", description="Benchmark the reply job: replyrank vs peers, one process each.")
    parser.add_argument("--bundle", help="bundle to benchmark (default: $REPLYRANK_BUNDLE, else the default bundle)")
    parser.add_argument("--fp32-bundle", help="an unquantized export of the same models, run as 'replyrank-fp32'")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, help="default: all (replyrank-fp32 only with --fp32-bundle)")
    parser.add_argument("--n", type=int, default=8, help="candidates per comment (default 8)")
    parser.add_argument("--t", type=int, default=32, help="new tokens per candidate, forced (default 32)")
    parser.add_argument("--passes", type=int, default=4, help="passes of interleaved timed runs (default 4)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each system per pass, after one warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads every system gets (default 2)")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for bench.json, bench.md and plots")
    parser.add_argument("--decode-ns", type=int, nargs="*", default=[1, 8, 16], help="batch sizes of the decode-step runs")
    parser.add_argument("--decode-t", type=int, default=16, help="new tokens of the decode-step runs (default 16)")
    parser.add_argument("--scaling-ns", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32], help="N of the latency-vs-N curve (at --t)")
    parser.add_argument("--scaling-ts", type=int, nargs="*", default=[8, 16, 32, 64, 128], help="T of the latency-vs-T curve (at --n)")
    parser.add_argument("--scaling-runs", type=int, default=3, help="runs per scaling point, median taken (default 3)")
    parser.add_argument("--generator-source", help="override the manifest's generator source (HF folder or .gguf)")
    parser.add_argument("--discriminator-source", help="override the manifest's discriminator source folder")
    parser.add_argument("--upvotes-source", help="override the manifest's upvote-model source folder")
    parser.add_argument("--relevance-source", help="override the manifest's relevance-embedder source folder")
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="where converted peer models are kept")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one step of a system may take: its conversion, load, a job, the rest (default 3600)")
    parser.add_argument("--comment", default=COMMENT, help="the comment to reply to")
    args = parser.parse_args(argv)
    if min(args.n, args.t, args.passes, args.runs, args.threads, args.decode_t - 1, args.scaling_runs) < 1:
        parser.error("--n, --t, --passes, --runs, --threads and --scaling-runs must be >= 1, --decode-t >= 2")
    return args


# ---------------------------------------------------------------------------- the floor


def copy_bandwidth_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """numpy copy of a `megabytes` array (one thread): (bytes read + bytes written) / best time. Not STREAM."""
    source = np.ones(megabytes * 2**20 // 8, dtype=np.float64)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault every page in before timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9


def decode_floor(step_bytes: dict[str, Any], prompt_tokens: int, t: int, ns: list[int], bandwidth_gbs: float) -> dict[str, Any]:
    """The ms a decode step takes at `bandwidth_gbs` when it reads only what it must: the weights a system reports
    (`systems.common.StepBytes`: model file less a table that is only gathered) plus the KV cache, the prompt's
    once (the candidates share it: llama.cpp's seq_cp cells, replyrank's one sequence) and each row's own tokens
    at their mean count over the T steps."""
    shared = step_bytes["kv_per_token"] * prompt_tokens
    per_row = step_bytes["kv_per_token"] * t / 2
    floor = {str(n): (step_bytes["weights"] + shared + n * per_row) / (bandwidth_gbs * 1e9) * 1e3 for n in ns}
    return {"weights_read_bytes": step_bytes["weights"], "kv_cache_prompt_bytes": shared, "kv_cache_bytes_per_candidate": per_row,
            "kv_mean_new_tokens": t / 2, "how": step_bytes["how"], "floor_ms_per_step": floor}


# ---------------------------------------------------------------------------- the machine


def environment(threads: int) -> dict[str, Any]:
    names = ["replyrank", "onnxruntime", "onnxruntime-genai", "tokenizers", "numpy", "torch", "transformers", "optimum", "optimum-onnx", "matplotlib"]
    return {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "threads": threads,
        "python": platform.python_version(), "platform": platform.platform(), "load_average": os.getloadavg(),
        "versions": package_versions(names),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS") if k in os.environ},
        **checkout(),
    }


# ---------------------------------------------------------------------------- running the systems


def python_for(system: str) -> str:
    env = HERE / ".envs" / ENVS.get(system, "-") / "bin" / "python"
    return str(env) if env.is_file() else sys.executable


def unavailable(system: str) -> str | None:
    """Why setup_peers.sh could not install a peer (it leaves the reason in .envs/NAME.unavailable)."""
    marker = HERE / ".envs" / f"{ENVS.get(system, '-')}.unavailable"
    return marker.read_text().strip() if marker.is_file() else None


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def harness_command(system: str, mode: str, settings: dict[str, Any]) -> list[str]:
    return [python_for(system), str(HERE / "harness.py"), system, "--mode", mode, "--json-args", json.dumps(settings)]


def failure(system: str, what: str, code: int | None, log: Path) -> dict[str, Any]:
    """An error naming the step, the exit status and the log's last line; with the install command where a peer's package is missing."""
    tail = (log.read_text().strip().splitlines() or [""])[-1]
    error = f"{what}: exit {code}: {tail[:300]} (see {log})"
    if "ModuleNotFoundError" in tail and system in ENVS:
        error += f" (bash benchmarks/setup_peers.sh {ENVS[system]} installs it into benchmarks/.envs/{ENVS[system]})"
    return {"system": system, "error": error}


def prepare_child(system: str, settings: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    """The system's conversion (`harness.py --mode prepare`) in a process of its own; its JSON line, or the error."""
    command = harness_command(system, "prepare", settings)
    with open(log, "a") as stderr:
        stderr.write(f"\n===== {system} prepare: {command[0]}\n")
        stderr.flush()
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout, env=child_env(settings["threads"]), cwd=HERE.parent)
        except subprocess.TimeoutExpired:
            return {"system": system, "error": f"prepare: timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if done.returncode == 0 and lines else failure(system, "prepare", done.returncode, log)


class Served:
    """One system loaded in its own `harness.py --mode serve` process, answering one request at a time."""

    def __init__(self, system: str, settings: dict[str, Any], timeout: float, log: Path) -> None:
        self.system, self.timeout, self.log = system, timeout, log
        command = harness_command(system, "serve", settings)
        with open(log, "a") as stderr:
            stderr.write(f"\n===== {system} serve: {command[0]}\n")
            stderr.flush()
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            env=child_env(settings["threads"]), cwd=HERE.parent)

    def answer(self, what: str) -> dict[str, Any]:
        """The next JSON line; the process is killed if it takes longer than the timeout, and then the error says so."""
        assert self.process.stdout is not None
        watchdog = threading.Timer(self.timeout, self.process.kill)
        watchdog.start()
        try:
            line = self.process.stdout.readline()
        finally:
            watchdog.cancel()
        if line.startswith("{"):
            return json.loads(line)
        code = self.process.wait()
        if code == -9:
            return {"system": self.system, "error": f"{what}: timed out after {self.timeout:.0f} s"}
        return failure(self.system, what, code, self.log)

    def ask(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died: answer() reports how
        return self.answer(what)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def prompt_of(bundle: Bundle, comment: str, t: int) -> tuple[list[int], str, int]:
    """The prompt ids replyrank feeds its generator, which every peer is given too."""
    from replyrank.generate import GenerationOptions, Generator

    generator = Generator(bundle.folder(bundle.generator), bundle.generator, threads=1)
    prompt = generator.encode_prompt(comment, GenerationOptions(max_new_tokens=t))
    text = bundle.generator.prompt_template.replace("{comment}", comment)
    return prompt.ids, text, prompt.comment_tokens


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Benchmark every requested system; write bench.json, bench.md and the plots; return the results."""
    from replyrank.locations import default_bundle_dir

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    bundle = Bundle.read(Path(args.bundle).expanduser() if args.bundle else default_bundle_dir())
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    systems = args.systems or [s for s in SYSTEMS if s != "replyrank-fp32" or args.fp32_bundle]
    if "replyrank-fp32" in systems and not args.fp32_bundle:
        raise SystemExit("replyrank-fp32 needs --fp32-bundle DIR")
    sources = dict(bundle.sources)
    for part in PARTS:
        if getattr(args, f"{part}_source"):
            sources[part] = getattr(args, f"{part}_source")
    prompt_ids, prompt_text, comment_tokens = prompt_of(bundle, args.comment, max([args.t, *args.scaling_ts]))
    sampling = job_sampling(bundle.generator)
    settings = {
        "bundle": str(bundle.root), "comment": args.comment, "prompt_ids": prompt_ids, "prompt_text": prompt_text, "sampling": sampling,
        "eos_ids": list(bundle.generator.eos_token_ids), "sources": sources, "cache": str(Path(args.cache).resolve()),
        "n": args.n, "t": args.t, "runs": args.runs, "threads": args.threads, "decode_ns": args.decode_ns, "decode_t": args.decode_t,
        "scaling_ns": args.scaling_ns, "scaling_ts": args.scaling_ts, "scaling_runs": args.scaling_runs,
    }
    log(f"prompt: {len(prompt_ids)} tokens ({comment_tokens} of them the comment); measuring memory bandwidth")
    bandwidth = copy_bandwidth_gbs()
    floor_ns = sorted({*args.decode_ns, args.n})
    floors: dict[str, Any] = {}
    results: dict[str, Any] = {
        "command": " ".join(["python benchmarks/bench.py", *argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "job": {"n": args.n, "t": args.t, **sampling,
                "forced_length": "min_new_tokens = max_new_tokens = T, EOS never ends a candidate",
                "comment": args.comment, "prompt_tokens": len(prompt_ids), "comment_tokens": comment_tokens,
                "passes": args.passes, "runs_per_pass": args.runs, "warmup_runs": 1, "threads": args.threads, "decode_ns": args.decode_ns},
        "environment": environment(args.threads),
        "floor": {"copy_bandwidth_gbs": bandwidth, "method": "numpy copy of a 512 MiB array, one thread, (read + written bytes) / best of 5; not STREAM",
                  "bundles": floors},
        "systems": {},
    }
    served = load_systems(systems, settings, args, out, results["systems"])
    try:
        interleave(served, args, results)
        measure_rest(served, results["systems"])
    finally:
        for child in served.values():
            child.close()
    for system, found in results["systems"].items():
        if "step_bytes" in found:
            floors[system] = decode_floor(found["step_bytes"], len(prompt_ids), args.t, floor_ns, bandwidth)
    results["load_average_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    add_ratios(results)
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plot(results, out)
    (out / "bench.json").write_text(portable(json.dumps(results, indent=2)) + "\n")
    (out / "bench.md").write_text(portable(markdown(results)))
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return results


def load_systems(systems: list[str], settings: dict[str, Any], args: argparse.Namespace, out: Path,
                 found: dict[str, Any]) -> dict[str, Served]:
    """Convert (cached) and load each system in its own process, one after the other, and warm each up with one job."""
    served: dict[str, Served] = {}
    for system in systems:
        own = {**settings, "bundle": str(Path(args.fp32_bundle).resolve())} if system == "replyrank-fp32" else dict(settings)
        log_path = out / "logs" / f"{system}.log"
        log_path.write_text("")
        found[system] = {"system": system, "python": python_for(system)}
        reason = unavailable(system)
        if reason:
            found[system]["error"] = f"not installable: {reason}"
            continue
        if hasattr(system_module(system), "prepare"):
            prepared = prepare_child(system, own, args.timeout, log_path)
            if "error" in prepared:
                found[system].update(prepared)
                log(f"{system}: {prepared['error']}")
                continue
            found[system]["prepare_s"] = prepared["prepare_s"]
            own["prepared"] = prepared["prepared"]
        log(f"{system}: loading in {found[system]['python']}")
        child = Served(system, own, args.timeout, log_path)
        loaded = child.answer("load")
        found[system].update(loaded)
        warm = loaded if "error" in loaded else child.ask({"job": 10_000}, "warm-up job")  # first-call allocations, lazy init, page faults
        if "error" in warm:
            found[system]["error"] = warm["error"]
            log(f"{system}: {warm['error']}")
            child.close()
            continue
        served[system] = child
    return served


def interleave(served: dict[str, Served], args: argparse.Namespace, results: dict[str, Any]) -> None:
    """`--passes` passes of `--runs` timed jobs per system, the systems taking turns run by run; the first rotates per pass."""
    rows: dict[str, list[dict[str, Any]]] = {system: [] for system in served}
    passes: list[dict[str, Any]] = []
    for number in range(args.passes):
        running = [system for system in served if "error" not in results["systems"][system]]
        order = running[number % len(running):] + running[: number % len(running)] if running else []
        this = {"order": order, "load_average": os.getloadavg(), "total_ms": {system: [] for system in order}}
        for run in range(args.runs):
            for system in order:
                if "error" in results["systems"][system]:
                    continue
                row = served[system].ask({"job": number * args.runs + run}, f"pass {number + 1}, run {run + 1}")
                if "error" in row:
                    results["systems"][system]["error"] = row["error"]
                    log(f"{system}: {row['error']}")
                    continue
                rows[system].append(row)
                this["total_ms"][system].append(row["total_ms"])
        passes.append(this)
        medians = {system: statistics.median(ms) for system, ms in this["total_ms"].items() if ms}
        log(f"pass {number + 1}/{args.passes}: " + ", ".join(f"{system} {ms:.0f} ms" for system, ms in medians.items()))
    results["passes"] = passes
    for system, done in rows.items():
        if done and "error" not in results["systems"][system]:
            results["systems"][system]["job"] = job_summary(done, args.t)


def measure_rest(served: dict[str, Served], found: dict[str, Any]) -> None:
    """Each system's decode steps, scaling curves and peak RSS, one system after the other, after the passes."""
    for system, child in served.items():
        if "error" in found[system]:
            continue
        started = time.perf_counter()
        rest = child.ask({"rest": True}, "steps and scaling")
        if "error" in rest:
            found[system]["steps"] = {"error": rest["error"]}
        else:
            found[system].update(rest)
        log(f"{system}: steps and scaling done in {time.perf_counter() - started:.0f} s")


def job_sampling(generator: GeneratorSpec) -> dict[str, Any]:
    """The sampling settings every system is given: the bundle's deployment sampling, less what the job sets itself."""
    fixed = ("candidates", "max_new_tokens", "min_new_tokens", "stop", "max_comment_tokens", *PER_CALL_OPTIONS)
    return {key: value for key, value in asdict(generator.sampling).items() if key not in fixed}


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and interquartile range of `values` (one per pass)."""
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "iqr": [quartiles[0], quartiles[2]],
            "per_pass": values}


def add_ratios(results: dict[str, Any]) -> None:
    """Each system's median job latency over replyrank's in the same pass (> 1: slower than replyrank), and their spread."""
    for name, system in results["systems"].items():
        ratios = [statistics.median(one["total_ms"][name]) / statistics.median(one["total_ms"]["replyrank"])
                  for one in results.get("passes", []) if one["total_ms"].get(name) and one["total_ms"].get("replyrank")]
        system["ratio_to_replyrank"] = spread(ratios) if ratios and "job" in system else None


def main() -> int:
    results = run()
    failed = [name for name, s in results["systems"].items() if "error" in s]
    return 1 if results["systems"] and len(failed) == len(results["systems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
