"""Wall time of `Bot.reply` on real held-out Reddit comments, as users call it (EOS and stop strings end candidates,
unlike bench.py's fixed-length job). One warm-up reply, then one reply per comment with seeds 0, 1, ...

    python benchmarks/probes/reply_times.py --bundle ~/.cache/replyrank/default-bundle [--comments 10]

The comments are the first of `benchmarks/results/reads_human.json`'s held-out sample (GradSchool and
CollegeRant). For an A/B of runtime code, run it alternately with PYTHONPATH pointing at a copy of the other version.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import click

import replyrank

SAMPLE = Path(__file__).resolve().parents[1] / "results" / "reads_human.json"


@click.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False), default=None, help="Bundle folder (default: the default bundle).")
@click.option("--comments", type=click.IntRange(1, 10), default=10, show_default=True, help="How many of the sample's 10 comments.")
def main(bundle: str | None, comments: int) -> None:
    samples = next(iter(json.loads(SAMPLE.read_text())["bundles"].values()))["samples"]
    texts = [s["comment"] for s in samples[:comments]]
    bot = replyrank.load(bundle)
    bot.reply("warm up", seed=0)
    times = []
    for seed, text in enumerate(texts):
        start = time.perf_counter()
        bot.reply(text, seed=seed)
        times.append(time.perf_counter() - start)
    print(json.dumps({"runtime": str(Path(replyrank.__file__).parent), "comments": len(texts),
                      "median_ms": round(statistics.median(times) * 1e3, 1), "total_s": round(sum(times), 3)}))
    print(f"{len(texts)} replies, median {statistics.median(times) * 1e3:.0f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
