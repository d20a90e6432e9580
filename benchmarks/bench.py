"""The reply job, side by side: replyrank against the runtimes a user could take instead.

    bash benchmarks/setup_peers.sh        # once: matplotlib, and venvs for ctranslate2 / llama-cpp-python
    python benchmarks/bench.py [--bundle DIR] [--fp32-bundle DIR] [--systems replyrank transformers ...]
                               [--n 8] [--t 32] [--runs 5] [--threads 2] [--out benchmarks/results]

The job: one fixed comment; N candidates of exactly T new tokens each (min = max new tokens, EOS
never ends a candidate), sampled with the bundle's deployment settings (its manifest's
`generator.sampling`: temperature 0.7, top-k 40 for bundles of today); then the discriminator and
the upvote model on the N (comment, reply) pairs. Every system gets the same prompt token ids, the
same settings and the same thread count, in a process of its own (`harness.py`, one module per
system in `systems/`), warmed up once, then timed
`--runs` times with `perf_counter`; medians are what is compared, as onnxruntime-genai's
`benchmark_e2e.py` does it. Also measured: load time, prefill, decode ms per step at N = 1, 8, 16,
scoring, peak RSS, job latency vs N and vs T (plots), and the memory-bandwidth floor of a decode
step. Writes bench.json, bench.md and the plots into `--out`.

`run(argv)` does all of it and returns the results; `replyrank bench` runs this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from harness import SYSTEMS, system_module
from replyrank.bundle import PARTS, PER_CALL_OPTIONS, Bundle, GeneratorSpec
from replyrank.environment import cpu_model, package_versions

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
    parser.add_argument("--runs", type=int, default=5, help="timed runs after the warm-up (default 5)")
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
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="where converted peer models are kept")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one system may take (default 3600)")
    parser.add_argument("--comment", default=COMMENT, help="the comment to reply to")
    args = parser.parse_args(argv)
    if min(args.n, args.t, args.runs, args.threads, args.decode_t - 1, args.scaling_runs) < 1:
        parser.error("--n, --t, --runs, --threads and --scaling-runs must be >= 1, --decode-t >= 2")
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
    }


# ---------------------------------------------------------------------------- running the systems


def python_for(system: str) -> str:
    env = HERE / ".envs" / ENVS.get(system, "-") / "bin" / "python"
    return str(env) if env.is_file() else sys.executable


def unavailable(system: str) -> str | None:
    """Why setup_peers.sh could not install a peer (it leaves the reason in .envs/NAME.unavailable)."""
    marker = HERE / ".envs" / f"{ENVS.get(system, '-')}.unavailable"
    return marker.read_text().strip() if marker.is_file() else None


def child(system: str, mode: str, settings: dict[str, Any], timeout: float, log: Path) -> dict[str, Any]:
    """Run harness.py for one system in its own process; its one JSON line, or the error."""
    env = {**os.environ, "OMP_NUM_THREADS": str(settings["threads"]), "MKL_NUM_THREADS": str(settings["threads"]),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    command = [python_for(system), str(HERE / "harness.py"), system, "--mode", mode, "--json-args", json.dumps(settings)]
    with open(log, "a") as stderr:
        stderr.write(f"\n===== {system} {mode}: {command[0]}\n")
        stderr.flush()
        try:
            done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout, env=env, cwd=HERE.parent)
        except subprocess.TimeoutExpired:
            return {"system": system, "error": f"{mode}: timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        return {"system": system, "error": f"{mode}: exit {done.returncode}: {tail[0][:300]} (see {log})"}
    result = json.loads(lines[-1])
    if "ModuleNotFoundError" in result.get("error", "") and system in ENVS:
        result["error"] += f" (bash benchmarks/setup_peers.sh {ENVS[system]} installs it into benchmarks/.envs/{ENVS[system]})"
    return result


def prompt_of(bundle: Bundle, comment: str, t: int) -> tuple[list[int], str, int]:
    """The prompt ids replyrank feeds its generator, which every peer is given too."""
    from replyrank.generate import GenerationOptions, Generator

    generator = Generator(bundle.folder(bundle.generator), bundle.generator, threads=1)
    prompt = generator.encode_prompt(comment, GenerationOptions(max_new_tokens=t))
    text = bundle.generator.prompt_template.replace("{comment}", comment)
    return prompt.ids, text, prompt.comment_tokens


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Benchmark every requested system; write bench.json, bench.md and the plots; return the results."""
    from replyrank.bundle import default_bundle_dir

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
                "runs": args.runs, "warmup_runs": 1, "threads": args.threads, "decode_ns": args.decode_ns},
        "environment": environment(args.threads),
        "floor": {"copy_bandwidth_gbs": bandwidth, "method": "numpy copy of a 512 MiB array, one thread, (read + written bytes) / best of 5; not STREAM",
                  "bundles": floors},
        "systems": {},
    }
    for system in systems:
        started = time.perf_counter()
        if system == "replyrank-fp32":
            system_settings = {**settings, "bundle": str(Path(args.fp32_bundle).resolve())}
        else:
            system_settings = settings
        results["systems"][system] = measure_system(system, system_settings, args.timeout, out / "logs" / f"{system}.log")
        if "step_bytes" in results["systems"][system]:
            floors[system] = decode_floor(results["systems"][system]["step_bytes"], len(prompt_ids), args.t, floor_ns, bandwidth)
        state = results["systems"][system].get("error") or f"done in {time.perf_counter() - started:.0f} s"
        log(f"{system}: {state}")
    add_ratios(results)
    out.mkdir(parents=True, exist_ok=True)
    results["plots"] = plot(results, out)
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(results))
    log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return results


def job_sampling(generator: GeneratorSpec) -> dict[str, Any]:
    """The sampling settings every system is given: the bundle's deployment sampling, less what the job sets itself."""
    fixed = ("candidates", "max_new_tokens", "min_new_tokens", "stop", "max_comment_tokens", *PER_CALL_OPTIONS)
    return {key: value for key, value in asdict(generator.sampling).items() if key not in fixed}


def measure_system(system: str, settings: dict[str, Any], timeout: float, log_path: Path) -> dict[str, Any]:
    """Convert the system's model if it needs it (cached), then measure it; each step its own process."""
    log_path.write_text("")
    reason = unavailable(system)
    if reason:
        return {"system": system, "error": f"not installable: {reason}"}
    found: dict[str, Any] = {"system": system, "python": python_for(system)}
    if hasattr(system_module(system), "prepare"):
        prepared = child(system, "prepare", settings, timeout, log_path)
        if "error" in prepared:
            return {**found, **prepared}
        found["prepare_s"] = prepared["prepare_s"]
        settings = {**settings, "prepared": prepared["prepared"]}
    log(f"{system}: measuring in {found['python']}")
    return {**found, **child(system, "measure", settings, timeout, log_path)}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median_of(system: dict[str, Any], stage: str = "total_ms") -> float | None:
    job = system.get("job")
    if not isinstance(job, dict) or stage not in job:
        return None
    return job[stage]["median"]


def add_ratios(results: dict[str, Any]) -> None:
    """Each system's median job latency over replyrank's (> 1: slower than replyrank)."""
    reference = median_of(results["systems"].get("replyrank", {}))
    for system in results["systems"].values():
        value = median_of(system)
        system["ratio_to_replyrank"] = value / reference if value is not None and reference else None


# ---------------------------------------------------------------------------- reporting


def plot(results: dict[str, Any], out: Path) -> list[str]:
    """latency_vs_n.png and latency_vs_t.png, one line per system that produced the curve."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        log("matplotlib is not installed (bash benchmarks/setup_peers.sh): no plots")
        return []
    written = []
    job = results["job"]
    for axis, key, label, fixed in (("n", "vs_n", "candidates N", f"T = {job['t']}"), ("t", "vs_t", "new tokens T", f"N = {job['n']}")):
        curves = {name: s["scaling"][key]["points"] for name, s in results["systems"].items()
                  if isinstance(s.get("scaling"), dict) and key in s["scaling"]}
        if not curves:
            continue
        figure, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, points in curves.items():
            xs = sorted(int(x) for x in points)
            ax.plot(xs, [points[str(x)] for x in xs], marker="o", label=name)
        ticks = sorted({int(x) for points in curves.values() for x in points})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # systems differ by factors: ratios read the same at every height
        ax.set_xticks(ticks, [str(x) for x in ticks])
        plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.set_xlabel(label)
        ax.set_ylabel("job latency, ms (generate + both scorers, median)")
        ax.set_title(f"reply job latency vs {axis.upper()} ({fixed}, {job['threads']} threads)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        figure.tight_layout()
        path = out / f"latency_vs_{axis}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path.name)
    return written


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    job, env, floor = results["job"], results["environment"], results["floor"]
    lines = [
        "# Reply job benchmark",
        "",
        f"`{results['command']}` — {results['started']}",
        "",
        f"Job: N = {job['n']} candidates × exactly T = {job['t']} new tokens ({job['forced_length']}), temperature {job['temperature']}, "
        f"top-k {job['top_k']}, then both scorers on the N pairs. Prompt {job['prompt_tokens']} tokens (comment {job['comment_tokens']}). "
        f"{job['threads']} threads for every system, each in its own process; 1 warm-up, then {job['runs']} timed runs (perf_counter); medians.",
        "",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs, load average at start {', '.join(f'{x:.2f}' for x in env['load_average'])}). "
        f"Python {env['python']}.",
        "",
        "| system | load s | job ms median (min–max) | × replyrank | generate ms | prefill ms "
        f"| decode ms/step N={' / '.join(str(n) for n in job['decode_ns'])} | step ÷ floor N={' / '.join(str(n) for n in job['decode_ns'])} "
        "| outside kernels | scoring ms | peak RSS MB (job / all) | tokens ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, system in results["systems"].items():
        if "error" in system and "job" not in system:
            lines.append(f"| {name} | failed: {system['error'].replace('|', '/')} |||||||||||")
            continue
        jobrow = system.get("job", {})
        if "error" in jobrow:
            lines.append(f"| {name} | {_fmt(system.get('load_s'), 1)} | job failed: {jobrow['error'].replace('|', '/')} ||||||||||")
            continue
        steps = system.get("steps", {})
        per_step = steps.get("decode_ms_per_step", {}) if "error" not in steps else {}
        total = jobrow["total_ms"]
        floor_ms = floor["bundles"].get(name, {}).get("floor_ms_per_step", {})
        over_floor = " / ".join(_fmt(per_step[str(n)] / floor_ms[str(n)], 2) if str(n) in per_step and str(n) in floor_ms else "–"
                                for n in job["decode_ns"])
        share = jobrow.get("outside_kernels_share")
        lines.append(
            f"| {name} | {_fmt(system.get('load_s'), 1)} | {_fmt(total['median'])} ({_fmt(total['min'])}–{_fmt(total['max'])}) "
            f"| {_fmt(system.get('ratio_to_replyrank'), 2)} | {_fmt(median_of(system, 'generate_ms'))} | {_fmt(steps.get('prefill_ms'), 1)} "
            f"| {' / '.join(_fmt(per_step.get(str(n)), 1) for n in job['decode_ns'])} | {over_floor} "
            f"| {'–' if share is None else f'{share:.1%}'} | {_fmt(median_of(system, 'score_ms'), 1)} "
            f"| {_fmt(system.get('peak_rss_job_mb'))} / {_fmt(system.get('peak_rss_mb'))} | {'yes' if jobrow.get('forced_length_ok') else 'NO ' + str(jobrow.get('new_tokens'))} |"
        )
    lines += [
        "",
        "- job ms: generate N × T + discriminator + upvote model, wall clock. replyrank's is `Bot.reply` (tokenizing, selection included); "
        "the peers get the prompt as token ids.",
        "- prefill ms: generating 1 token at N = 1 (prompt pass + one sample). decode ms/step: (median time for T = "
        f"{_steps_t(results)} − median time for T = 1) / (T − 1), at batch N, from separate runs.",
        "- step ÷ floor: the decode step over its bandwidth floor (below) at the same N.",
        "- outside kernels: the share of the job's wall time spent outside the runtimes' compute calls (session runs, llama_decode, "
        "generate_batch...: each system's notes say which), median over the runs; tokenizing, sampling, cache moves, selection and glue. "
        "'–' where the whole generate is one library call that does its own sampling (not separable from Python).",
        "- scoring ms: both scorers on the job's N pairs (replyrank: as timed inside `Bot.reply`).",
        "- peak RSS: the child process's peak resident set (VmHWM) after the timed job runs / after everything (the scaling runs reach the largest N).",
        "",
        "## Notes per system",
        "",
    ]
    for name, system in results["systems"].items():
        notes = list(system.get("notes", []))
        for part in ("job", "steps", "scaling"):
            if isinstance(system.get(part), dict) and "error" in system[part]:
                notes.append(f"{part} failed: {system[part]['error']}")
        if "error" in system:
            notes.append(f"error: {system['error']}")
        if system.get("prepare_s") is not None:
            notes.append(f"conversion (cached, not in load time): {system['prepare_s']:.1f} s")
        versions = ", ".join(f"{k} {v}" for k, v in system.get("versions", {}).items() if v)
        if system.get("python"):
            notes.append(f"python: {system['python']}" + (f"; {versions}" if versions else ""))
        lines.append(f"- **{name}**: " + "; ".join(notes))
    lines += versus_llamacpp(results)
    lines += ["", "## The floor", "",
              f"Memory bandwidth: {floor['copy_bandwidth_gbs']:.1f} GB/s ({floor['method']}).", ""]
    for name, item in floor["bundles"].items():
        per_n = ", ".join(f"N={n}: {ms:.2f} ms" for n, ms in item["floor_ms_per_step"].items())
        lines.append(
            f"- {name}: a decode step reads {item['weights_read_bytes'] / 1e6:.1f} MB of weights ({item['how']}) "
            f"+ {item['kv_cache_prompt_bytes'] / 1e6:.2f} MB of the prompt's KV cache (read once: the candidates share it) "
            f"+ {item['kv_cache_bytes_per_candidate'] / 1e6:.2f} MB per candidate ({item['kv_mean_new_tokens']:.0f} new tokens on average): "
            f"floor {per_n}."
        )
        measured = results["systems"].get(name, {}).get("steps", {}).get("decode_ms_per_step", {})
        if measured:
            lines.append("  measured / floor: " + ", ".join(
                f"N={n}: {measured[n] / ms:.1f}×" for n, ms in item["floor_ms_per_step"].items() if n in measured))
    lines += scaling_tables(results)
    if results.get("plots"):
        lines += ["", *[f"![{p}]({p})" for p in results["plots"]]]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), ""]
    return "\n".join(lines) + "\n"


def versus_llamacpp(results: dict[str, Any]) -> list[str]:
    """replyrank's job against each llama.cpp row: their median over replyrank's (> 1: replyrank is faster)."""
    reference = median_of(results["systems"].get("replyrank", {}))
    rows = [(name, median_of(system)) for name, system in results["systems"].items() if name.startswith("llamacpp")]
    rows = [(name, value) for name, value in rows if value is not None]
    if reference is None or not rows:
        return []
    lines = ["", "## replyrank against llama.cpp", "", "| llama.cpp row | job ms median | llama.cpp ÷ replyrank |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(value)} | {value / reference:.2f} |" for name, value in rows]
    return lines + ["", "Rows ending in -q4_0 and -q8_0 run the shipped Q4_1 GGUF requantized with llama.cpp's own quantizer "
                    "(llama_model_quantize): they have the speed of such files, not the accuracy of ones made from the original weights."]


def _steps_t(results: dict[str, Any]) -> str:
    for system in results["systems"].values():
        t = system.get("steps", {}).get("t")
        if t:
            return str(t)
    return "16"


def scaling_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    job = results["job"]
    for key, title in (("vs_n", f"Job latency ms vs N (T = {job['t']})"), ("vs_t", f"Job latency ms vs T (N = {job['n']})")):
        curves = {name: s["scaling"][key]["points"] for name, s in results["systems"].items() if isinstance(s.get("scaling"), dict) and key in s["scaling"]}
        if not curves:
            continue
        xs = sorted({int(x) for points in curves.values() for x in points})
        lines += ["", f"## {title}", "", "| system | " + " | ".join(str(x) for x in xs) + " |", "|---|" + "---|" * len(xs)]
        for name, points in curves.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(points.get(str(x))) for x in xs) + " |")
    return lines


def main() -> int:
    results = run()
    failed = [name for name, s in results["systems"].items() if "error" in s]
    return 1 if results["systems"] and len(failed) == len(results["systems"]) else 0


if __name__ == "__main__":
    sys.exit(main())
