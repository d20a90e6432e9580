"""bench.py's report: bench.md (the tables) and the latency plots, from the results bench.json holds."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median_of(system: dict[str, Any], stage: str = "total_ms") -> float | None:
    job = system.get("job")
    if not isinstance(job, dict) or stage not in job:
        return None
    return job[stage]["median"]


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
        ax.set_ylabel("job latency, ms (generate + scorers, median)")
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
    job, env = results["job"], results["environment"]
    decode_ns = " / ".join(str(n) for n in job["decode_ns"])
    lines = [
        "# Reply job benchmark",
        "",
        f"`{results['command']}` — {results['started']} to {results.get('finished', '–')}",
        "",
        f"Job: N = {job['n']} candidates × exactly T = {job['t']} new tokens ({job['forced_length']}), temperature {job['temperature']}, "
        f"top-k {job['top_k']}, then the bundle's scorers on the N pairs (the realism and upvote heads, and the relevance embedder where the bundle has one). Prompt {job['prompt_tokens']} tokens (comment {job['comment_tokens']}). "
        f"{job['threads']} thread{'s' if job['threads'] != 1 else ''} for every system, each in its own process, loaded once; 1 warm-up, then {job['passes']} passes of "
        f"{job['runs_per_pass']} timed runs per system (perf_counter), the systems taking turns run by run (A B A B …; the first "
        "rotates from pass to pass), so a drift of the machine's speed hits every system alike; medians.",
        "",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs). Load average (1, 5, 15 min) at the start {_loads(env['load_average'])}, "
        f"at the end {_loads(results.get('load_average_end'))}: other work shared the machine where these are above 0. "
        f"Python {env['python']}. Commit {env.get('commit') or '–'}"
        + (f", with {len(env['uncommitted'])} uncommitted files in runtime/, export/ or benchmarks/ (bench.json lists them)"
           if env.get("uncommitted") else "") + ".",
        "",
        "| system | load s | job ms median (min–max) | × replyrank: median of passes (min–max) | generate ms | prefill ms "
        f"| decode ms/step N={decode_ns} | step ÷ floor N={decode_ns} | outside kernels | scoring ms | peak RSS MB (job / all) | tokens ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[system_row(name, system, results) for name, system in results["systems"].items()],
        "",
        "- job ms: generate N × T + the scorers, wall clock, over every timed run of every pass. replyrank's is "
        "`Bot.reply` (tokenizing, selection included); the peers get the prompt as token ids.",
        "- × replyrank: in each pass, the system's median job over replyrank's median job in the same pass; the median over the passes, "
        "and the smallest and largest pass (each pass's ratio is in the table of passes below).",
        "- prefill ms: generating 1 token at N = 1 (prompt pass + one sample). decode ms/step: (median time for T = "
        f"{_steps_t(results)} − median time for T = 1) / (T − 1), at batch N, from separate runs after the passes.",
        "- step ÷ floor: the decode step over its bandwidth floor (below) at the same N.",
        "- outside kernels: the share of the job's wall time spent outside the runtimes' compute calls (session runs, llama_decode, "
        "generate_batch...: each system's notes say which), median over the runs; tokenizing, sampling, cache moves, selection and glue. "
        "'–' where the whole generate is one library call that does its own sampling (not separable from Python).",
        "- scoring ms: every scorer of the bundle on the job's N pairs (replyrank: as timed inside `Bot.reply`).",
        "- peak RSS: the child process's peak resident set (VmHWM) after the timed job runs / after everything (the scaling runs reach the largest N).",
    ]
    lines += passes_table(results)
    lines += versus_llamacpp(results)
    lines += notes_section(results)
    lines += floor_section(results)
    lines += scaling_tables(results)
    if results.get("plots"):
        lines += ["", *[f"![{p}]({p})" for p in results["plots"]]]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), ""]
    return "\n".join(lines) + "\n"


def system_row(name: str, system: dict[str, Any], results: dict[str, Any]) -> str:
    """The system's row of the main table, or what failed."""
    job = results["job"]
    if "error" in system and "job" not in system:
        return f"| {name} | failed: {system['error'].replace('|', '/')} |||||||||||"
    jobrow = system.get("job", {})
    if "error" in jobrow:
        return f"| {name} | {_fmt(system.get('load_s'), 1)} | job failed: {jobrow['error'].replace('|', '/')} ||||||||||"
    steps = system.get("steps", {})
    per_step = steps.get("decode_ms_per_step", {}) if "error" not in steps else {}
    total = jobrow["total_ms"]
    floor_ms = results["floor"]["bundles"].get(name, {}).get("floor_ms_per_step", {})
    over_floor = " / ".join(_fmt(per_step[str(n)] / floor_ms[str(n)], 2) if str(n) in per_step and str(n) in floor_ms else "–"
                            for n in job["decode_ns"])
    share = jobrow.get("outside_kernels_share")
    return (
        f"| {name} | {_fmt(system.get('load_s'), 1)} | {_fmt(total['median'])} ({_fmt(total['min'])}–{_fmt(total['max'])}) "
        f"| {_ratio(system.get('ratio_to_replyrank'))} | {_fmt(median_of(system, 'generate_ms'))} | {_fmt(steps.get('prefill_ms'), 1)} "
        f"| {' / '.join(_fmt(per_step.get(str(n)), 1) for n in job['decode_ns'])} | {over_floor} "
        f"| {'–' if share is None else f'{share:.1%}'} | {_fmt(median_of(system, 'score_ms'), 1)} "
        f"| {_fmt(system.get('peak_rss_job_mb'))} / {_fmt(system.get('peak_rss_mb'))} | {'yes' if jobrow.get('forced_length_ok') else 'NO ' + str(jobrow.get('new_tokens'))} |"
    )


def notes_section(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Notes per system", ""]
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
    return lines


def floor_section(results: dict[str, Any]) -> list[str]:
    floor = results["floor"]
    lines = ["", "## The floor", "", f"Memory bandwidth: {floor['copy_bandwidth_gbs']:.1f} GB/s ({floor['method']}).", ""]
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
    return lines


def passes_table(results: dict[str, Any]) -> list[str]:
    """One row per pass: its order, the load average at its start, each system's median job and its ratio to replyrank's."""
    passes = results.get("passes") or []
    names = [name for name in results["systems"] if any(one["total_ms"].get(name) for one in passes)]
    if not passes or not names:
        return []
    others = [name for name in names if name != "replyrank"]
    lines = ["", "## The passes", "",
             "| pass | order | load average at start | " + " | ".join(f"{name} ms" for name in names) + " | "
             + " | ".join(f"{name} ÷ replyrank" for name in others) + " |",
             "|---|---|---|" + "---|" * (len(names) + len(others))]
    for number, one in enumerate(passes, 1):
        medians = {name: statistics.median(one["total_ms"][name]) if one["total_ms"].get(name) else None for name in names}
        reference = medians.get("replyrank")
        ratios = [_fmt(medians[name] / reference, 2) if medians[name] and reference else "–" for name in others]
        lines.append(f"| {number} | {' '.join(one['order'])} | {_loads(one['load_average'])} | "
                     + " | ".join(_fmt(medians[name]) for name in names) + " | " + " | ".join(ratios) + " |")
    return lines + ["", "Each cell is the median of the pass's timed runs of that system."]


def versus_llamacpp(results: dict[str, Any]) -> list[str]:
    """replyrank's job against each llama.cpp row: their median over replyrank's, pass by pass (> 1: replyrank is faster)."""
    rows = [(name, system) for name, system in results["systems"].items() if name.startswith("llamacpp") and system.get("ratio_to_replyrank")]
    if not rows:
        return []
    passes = len(results.get("passes") or [])
    lines = ["", "## replyrank against llama.cpp", "",
             f"| llama.cpp row | job ms median | llama.cpp ÷ replyrank: median of {passes} passes | min–max | interquartile range | per pass |",
             "|---|---|---|---|---|---|"]
    for name, system in rows:
        ratio = system["ratio_to_replyrank"]
        lines.append(f"| {name} | {_fmt(median_of(system))} | {ratio['median']:.2f} | {ratio['min']:.2f}–{ratio['max']:.2f} "
                     f"| {ratio['iqr'][0]:.2f}–{ratio['iqr'][1]:.2f} | {', '.join(f'{x:.2f}' for x in ratio['per_pass'])} |")
    return lines + ["", "Rows ending in -q4_0 and -q8_0 run the shipped Q4_1 GGUF requantized with llama.cpp's own quantizer "
                    "(llama_model_quantize): they have the speed of such files, not the accuracy of ones made from the original weights."]


def _ratio(ratio: dict[str, Any] | None) -> str:
    return "–" if not ratio else f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})"


def _loads(loads: list[float] | None) -> str:
    return "–" if not loads else ", ".join(f"{x:.2f}" for x in loads)


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


