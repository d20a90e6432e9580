"""How fast `replyrank batch` ranks, against a plain single-process loop over the same shards.

    python benchmarks/batch_bench.py --bundle BUNDLE --data RC_x.zst --data RS_x.zst --mode score \
        --limit 5000 --work /tmp/batch-bench [--json results.json]

1. stages and selects the dumps once (`replyrank.batch.run_batch`), so every system below ranks
   the same work shards;
2. `plain`: one process, one `Ranker` (the same class the actors run, 1 ONNX Runtime thread),
   looping over the shards' rows in the same batch size; one warm-up batch first, not timed.
   It runs at nice 15, as Ray starts its workers, so that other jobs on the machine slow both
   alike (`plain-nice0` is the same loop at normal priority);
3. `ray-K` for each K in --workers: the rank step alone of `run_batch` with K actors of 1
   thread each, in a local Ray started for that run (`ray.init(num_cpus=K)`); its output is
   deleted before each run so all shards are ranked again. Ray's start-up is timed apart, and
   the rate is given over the whole rank step and after its first rows came back (actor start-up
   and bundle loading excluded).

Prints one JSON object: rows, seconds and rows/s per system, and Ray's overhead against the plain
loop (the extra wall time of `ray-1`'s rank step, and Ray's start-up), with the CPU model, the
load average before each run and package versions.

`--steps-only` skips the ranking and measures the two steps before it instead, without Ray, in
one process: staging the whole dumps (--limit does not apply) and selecting their buckets, in rows
per CPU second. Staging reads a dump as one stream on one core, so on a cluster its rate, not the
cluster's size, bounds how fast one dump file is staged.

Wall time on a shared machine depends on what else runs. CPU time does much less, so each system
also reports the CPU seconds it used (psutil, sampled every 0.2 s over this process's tree: the
driver, Ray's own processes and its workers; for `ray-K`, the actors' share apart) and rows per
CPU second: the per-core rate, which is what a larger machine or a cluster multiplies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from replyrank.batch import RESULTS, WORK, BatchOptions, Ranker, run_batch
from replyrank.environment import available_cores, cpu_model, package_versions


def _sampling(bundle: str, overrides: dict) -> object:
    """The sampling options reply mode runs with: the bundle's deployment ones with the overrides."""
    import replyrank

    return replace(replyrank.load(bundle).sampling, **overrides)


def plain_loop(work: Path, bundle: str, options: BatchOptions) -> dict[str, float]:
    """The baseline: the actors' own Ranker, in this process, over every work shard."""
    import pyarrow.parquet as pq

    ranker = Ranker(bundle, options.mode, 1, options.sampling, options.threshold, options.strict, options.seed)
    tables = [pq.read_table(path) for path in sorted(work.glob("*.parquet"))]
    size = options.rows_per_batch
    ranker(tables[0].slice(0, size))  # warm-up, not timed
    start, cpu = time.perf_counter(), time.process_time()
    rows = sum(ranker(table.slice(i, size)).num_rows for table in tables for i in range(0, table.num_rows, size))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1), "cpu_seconds": round(cpu, 2),
            "rows_per_cpu_s": round(rows / cpu, 3)}


class CpuMeter:
    """CPU seconds of this process and all its descendants while it runs, by process name."""

    def __init__(self, every: float = 0.2):
        import threading

        self.every, self.seen, self.names = every, {}, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                key = (proc.pid, proc.create_time())
                self.seen[key] = times.user + times.system
                self.names[key] = proc.name() if proc is not me else "driver"
            except psutil.Error:
                pass

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._sample()
        self.start = dict(self.seen)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._sample()

    def used(self) -> dict[str, float]:
        by_name: dict[str, float] = {}
        for key, seconds in self.seen.items():
            name = self.names[key]
            group = "actors" if "MapWorker" in name or "Ranker" in name else name
            by_name[group] = by_name.get(group, 0.0) + seconds - self.start.get(key, 0.0)
        return {name: round(seconds, 2) for name, seconds in sorted(by_name.items())}


def _niced(niceness: int) -> None:
    os.nice(niceness)


def plain_in_child(work: Path, bundle: str, options: BatchOptions, niceness: int) -> dict[str, float]:
    """`plain_loop` in a fresh process at `niceness`."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, initializer=_niced, initargs=(niceness,)) as pool:
        return {"niceness": niceness, **pool.submit(plain_loop, work, bundle, options).result()}


def ray_run(paths: list[str], out: Path, bundle: str, options: BatchOptions, workers: int) -> dict[str, float]:
    shutil.rmtree(out / RESULTS, ignore_errors=True)
    for done in (out / WORK).glob("*.done.json"):
        done.unlink()
    start = time.perf_counter()
    with CpuMeter() as meter:
        summary = run_batch(paths, out, bundle, replace(options, workers=workers, cpus=workers, threads=1))
    wall = time.perf_counter() - start
    cpu = meter.used()
    rank = summary["seconds"]["rank"]
    rows = summary["this_run"]["rows_ranked"]
    return {"rows": rows, "rank_seconds": rank, "rows_per_s": round(rows / rank, 1),
            "rows_per_s_after_start": summary["rates"]["rank_rows_per_s_after_start"],
            "first_rows_seconds": summary["seconds"]["rank_first_rows"], "ray_start_seconds": summary["seconds"]["ray_start"],
            "wall_seconds": round(wall, 2),
            # the whole run's CPU (Ray start, workers, driver), and the actors' part: start-up, bundle loading, ranking
            "cpu_seconds": round(sum(cpu.values()), 2), "cpu_seconds_by_process": cpu,
            "rows_per_actor_cpu_s": round(rows / cpu["actors"], 3) if cpu.get("actors") else None,
            "rows_per_cpu_s": round(rows / sum(cpu.values()), 3)}


def steps_cpu(paths: list[str], work: Path, mode: str, buckets: int) -> dict:
    """Stage every dump whole, then select every bucket, in this process: rows per CPU second of each step."""
    from replyrank.batch import Selection, select_bucket, stage_dump

    shutil.rmtree(work, ignore_errors=True)
    staged = [work / f"dump{i}" for i in range(len(paths))]
    start, cpu = time.perf_counter(), time.process_time()
    rows = sum(stage_dump(path, str(folder), buckets, None)["rows"] for path, folder in zip(paths, staged))
    stage = {"rows": rows, "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}
    start, cpu = time.perf_counter(), time.process_time()
    (work / "work").mkdir()
    for k in range(buckets):
        files = [str(f / f"b{k:04d}.parquet") for f in staged if (f / f"b{k:04d}.parquet").is_file()]
        select_bucket(k, files, str(work / "work"), mode, Selection(), 4096, 64)
    select = {"rows": rows, "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2)}
    for step in (stage, select):
        step["rows_per_cpu_s"] = round(step["rows"] / step["cpu_seconds"], 1)
    return {"dumps": paths, "dump_bytes": sum(Path(p).stat().st_size for p in paths), "buckets": buckets,
            "stage": stage, "select": select}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="Needed unless --steps-only.")
    parser.add_argument("--steps-only", action="store_true", help="Measure staging and selecting alone (no bundle, no Ray).")
    parser.add_argument("--no-nice0", action="store_true", help="Skip the plain loop at normal priority.")
    parser.add_argument("--data", action="append", required=True)
    parser.add_argument("--mode", choices=("reply", "score"), default="score")
    parser.add_argument("--limit", type=int, default=None, help="Rows read from each dump.")
    parser.add_argument("--work", default="/tmp/replyrank-batch-bench", help="Folder for the staged data and outputs.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--candidates", type=int, default=None, help="Reply mode (default: the bundle's).")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Reply mode (default: the bundle's).")
    parser.add_argument("--shard-rows", type=int, default=None, help="Default: 32 reply, 512 score.")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    header = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "cpu": cpu_model(), "cores": available_cores(), "load_before": os.getloadavg()[0],
              "versions": package_versions(("replyrank", "ray", "pyarrow", "onnxruntime", "numpy"))}
    if args.steps_only:
        results = {**header, **steps_cpu(args.data, Path(args.work), args.mode, 8)}
        print(json.dumps(results, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        return results
    if not args.bundle:
        parser.error("--bundle is needed unless --steps-only")

    given = {"candidates": args.candidates, "max_new_tokens": args.max_new_tokens}
    sampling = {k: v for k, v in given.items() if v is not None}
    # small shards, so that the first rows come back soon and the rate after start-up is measured over most of the work
    options = BatchOptions(mode=args.mode, sampling=sampling, limit=args.limit, buckets=8,
                           shard_rows=args.shard_rows or (32 if args.mode == "reply" else 512))
    out = Path(args.work)
    shutil.rmtree(out, ignore_errors=True)
    print("staging and selecting once (and a first ranking with 2 workers, discarded)", file=sys.stderr)
    first = run_batch(args.data, out, args.bundle, replace(options, workers=2, cpus=2))

    results: dict = {
        **header,
        "mode": args.mode,
        "bundle": str(Path(args.bundle).resolve()),
        "sampling": asdict(_sampling(args.bundle, sampling)) if args.mode == "reply" else None,
        "rows_staged": first["rows_staged"],
        "rows_to_rank": first["output_rows"],
        "stage_rows_per_s": first["rates"]["stage_rows_per_s"],
        "select_rows_per_s": first["rates"]["select_rows_per_s"],
        "systems": {},
    }
    print(f"plain loop over {first['output_rows']} rows", file=sys.stderr)
    results["systems"]["plain"] = {"load_before": os.getloadavg()[0], **plain_in_child(out / WORK, args.bundle, options, 15)}
    if not args.no_nice0:
        results["systems"]["plain-nice0"] = {"load_before": os.getloadavg()[0], **plain_in_child(out / WORK, args.bundle, options, 0)}
    for workers in args.workers:
        print(f"ray, {workers} worker(s)", file=sys.stderr)
        results["systems"][f"ray-{workers}"] = {"load_before": os.getloadavg()[0],
                                                **ray_run(args.data, out, args.bundle, options, workers)}
    plain, one = results["systems"]["plain"], results["systems"].get("ray-1")
    if one:
        results["ray_overhead"] = {
            "rank_step_extra_seconds_1_worker": round(one["rank_seconds"] - plain["seconds"], 2),
            "rank_step_slowdown_1_worker": round(plain["rows_per_s"] / one["rows_per_s"], 2),
            "slowdown_after_start_1_worker": round(plain["rows_per_s"] / one["rows_per_s_after_start"], 2),
            "ray_start_seconds": one["ray_start_seconds"],
        }
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
