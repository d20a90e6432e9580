"""Where a warm `replyrank reply` spends its wall time: starting Python, imports, opening the bundle, the reply.

Each measurement is a fresh process, as a user's command is (the bundle already built and its
files in the page cache after the first run): the wall time of `python -c pass`, of importing the
CLI, and of the whole `replyrank reply COMMENT --seed i`, medians over --runs; then the phases of
one load and reply timed inside a process (`--phases` runs them and prints JSON): imports,
reading the manifest, each tokenizer and session, the template prefix's prefill, and the reply's
own timings. Check the load average first: a busy second core changes every number.

    python benchmarks/startup.py [--bundle DIR] [--runs 7] [--cli PATH] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

COMMENT = "I just got accepted into my dream college but I can't afford it. What should I do?"


def phases(bundle: str) -> dict[str, float]:
    """Milliseconds of each step of one CLI-like load and reply, in this (fresh) process."""
    ms: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        ms[name] = (now - start) * 1e3
        start = now

    import replyrank.cli  # noqa: F401  what the `replyrank` command imports

    lap("import replyrank.cli")
    from replyrank.bundle import Bundle
    from replyrank.generate import Generator
    from replyrank.score import Scorers
    from replyrank.sessions import create_session, load_tokenizer

    read = Bundle.read(bundle, verify_hashes=False)
    lap("Bundle.read")
    read.verify()
    lap("verify (stamp)")
    folder = read.folder(read.generator)
    load_tokenizer(folder / "tokenizer.json")
    lap("generator tokenizer")
    create_session(folder / "model.onnx")
    lap("generator session")
    generator = Generator(folder, read.generator)
    lap("Generator (tokenizer + session + prefix prefill)")
    ms["of which prefix prefill"] = generator.prefix_prefill_s * 1e3
    Scorers(read)
    lap("Scorers (tokenizer + session)")
    bot = replyrank.load(bundle)
    lap("replyrank.load (all of it, parts side by side)")
    result = bot.reply(COMMENT, seed=1)
    lap("Bot.reply")
    ms.update({f"reply {k}": v for k, v in result.timings_ms.items()})
    return ms


def wall(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=None, help="default: $REPLYRANK_BUNDLE, else the default bundle")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--phases", action="store_true", help="(internal) time the phases in this process and print JSON")
    parser.add_argument("--out", help="also write the results to this JSON file")
    parser.add_argument("--cli", default=shutil.which("replyrank") or "replyrank", help="the replyrank command to time (default: the one on PATH)")
    args = parser.parse_args()
    if args.bundle is None:
        from replyrank.locations import default_bundle_dir

        args.bundle = str(default_bundle_dir())
    if args.phases:
        print(json.dumps(phases(args.bundle)))
        return
    cli = args.cli
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import replyrank.cli'": [sys.executable, "-c", "import replyrank.cli"],
        "replyrank --version": [cli, "--version"],
    }
    from portable import checkout, portable
    from replyrank.environment import cpu_model

    results: dict[str, object] = {
        "command": portable(" ".join(["python benchmarks/startup.py", *sys.argv[1:]])), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), **checkout(),
        "load_average": os.getloadavg(), "env": {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE",)},
    }
    for name, command in commands.items():
        times = wall(command, args.runs)
        results[name] = {"median_s": statistics.median(times), "all_s": times}
    replies = [wall([cli, "reply", COMMENT, "--seed", str(seed), "--bundle", args.bundle], 1)[0] for seed in range(1, args.runs + 1)]
    results["replyrank reply --seed 1..runs"] = {"median_s": statistics.median(replies), "all_s": replies}
    runs = [json.loads(subprocess.run([sys.executable, __file__, "--phases", "--bundle", args.bundle], check=True,
                                      capture_output=True, text=True).stdout) for _ in range(args.runs)]
    results["phases_ms_median"] = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    results["load_average_end"] = os.getloadavg()
    text = portable(json.dumps(results, indent=2))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
