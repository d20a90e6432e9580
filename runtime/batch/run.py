"""A batch run from start to summary: the folder lock, Ray, the three steps, and the commit of each shard.

Each step is committed in pieces (a dump, a bucket, a shard), so the same command started again
after a kill redoes only the piece it was in; `layout` says where each piece lives. Ray starts
here in local mode unless it runs in this process already or `--address` names a cluster.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..environment import available_cores
from ..errors import BundleError, InputError, ReplyrankError
from .layout import (DONE, RESULTS, SETTINGS, STAGED, SUMMARY, WORK, auto_buckets, bucket_file, bucket_marker, dump_key,
                     read_json, shard_counts, write_json)
from .options import BatchOptions
from .pipeline import Ranked, rank_shards
from .progress import Progress, Timer, rate, say
from .select import select_bucket
from .stage import check_dump, remove_partial_folders, stage_dump


def run_batch(paths: list[str | Path], out: str | Path, bundle: str | Path, options: BatchOptions) -> dict[str, Any]:
    """Rank the dumps `paths` into the folder `out`; returns the summary (also written to out/summary.json).

    Starts a local Ray (`ray.init(num_cpus=...)`) unless one is running in this process or
    `options.address` names a cluster; stops only what it started. Resumes a run killed in the
    same folder with the same options.
    """
    options.check()
    dumps = sorted({Path(p).resolve() for p in paths})
    if not dumps:
        raise InputError("give at least one dump (--data)")
    for dump in dumps:
        check_dump(dump)
    bundle = Path(bundle).resolve()
    _check_bundle(bundle, options.mode)
    if options.buckets is None:
        options = replace(options, buckets=auto_buckets(dumps, options.limit))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        return _run_locked(dumps, out, bundle, options)


def _check_bundle(bundle: Path, mode: str) -> None:
    """Open the bundle once here, so a broken one, or a ranking bundle asked to reply, is one line now, not an actor
    failure later."""
    from ..bot import Bot
    from ..errors import RankingOnly

    if not (bundle / "replyrank.json").is_file():
        raise BundleError(f"no bundle at {bundle}: give --bundle DIR, or build the default one with `replyrank build-default`")
    bot = Bot(bundle, threads=1, generator=mode == "reply")  # score mode opens the scorers alone
    if mode == "reply" and bot.ranking_only:
        raise RankingOnly(f"{bundle} is a ranking bundle (no generator): it cannot write replies; rank the real replies with "
                          "--mode score, or give a bundle with a generator")


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """One run per folder at a time. The lock goes with the process, so a killed run never leaves it held."""
    import fcntl

    with (out / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out} is in use by another replyrank batch run; wait for it or give another --out") from None
        yield


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record what the run in `out` decides its output with, or refuse a run that differs from the one recorded."""
    settings_file = out / SETTINGS
    if not settings_file.is_file():
        write_json(settings_file, settings)
        return
    before = read_json(settings_file)
    if before != settings:
        changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
        raise InputError(
            f"{out} holds a run started with other settings ({', '.join(changed)}); "
            "run the same command to resume it, or give another --out"
        )


def _run_locked(dumps: list[Path], out: Path, bundle: Path, options: BatchOptions) -> dict[str, Any]:
    _check_settings(out, {"replyrank_batch": 1, "data": [str(d) for d in dumps], "bundle": str(bundle), **options.settings()})
    for folder in (STAGED, WORK, RESULTS):
        (out / folder).mkdir(exist_ok=True)

    import ray

    timer = Timer()
    started_here = False
    if not ray.is_initialized():
        if options.address:
            timer.run("ray_start", lambda: _join(ray, options.address))
        else:
            # "local": a Ray of its own, even on a machine that belongs to a cluster (which plain ray.init() would join)
            cpus = options.cpus or available_cores()
            timer.run("ray_start", lambda: ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                                                    logging_level="warning", log_to_driver=False))
        started_here = True
    try:
        summary = _run(ray, dumps, out, bundle, options, timer)
    except ray.exceptions.RayError as error:  # retries spent, a lost driver connection: what is committed stays
        raise ReplyrankError(f"Ray stopped the run ({_root_cause(error)}); what it committed is kept, "
                             "and the same command goes on from there") from error
    finally:
        if started_here:
            ray.shutdown()
    summary["seconds"]["ray_start"] = round(timer.seconds.get("ray_start", 0.0), 2)
    write_json(out / SUMMARY, summary)
    return summary


def _join(ray: Any, address: str) -> None:
    """Connect to the cluster at `address`; one that cannot be reached or refuses this driver is a one-line error.

    A host:port is tried first with a plain TCP connection: Ray itself retries an address where
    nothing listens for minutes before it gives up."""
    host, _, port = address.rpartition(":")
    if host and "://" not in address and port.isdigit():
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as error:
            raise InputError(f"no Ray cluster answers at {address} ({error}); start one with `ray start --head`") from None
    try:
        ray.init(address=address, logging_level="warning", log_to_driver=False)
    except (ConnectionError, ray.exceptions.RayError) as error:
        raise InputError(f"cannot join the Ray cluster at {address} ({_root_cause(error)}); "
                         "is it running, and does this machine share its RAY_AUTH_MODE and token?") from None


def _root_cause(error: BaseException) -> str:
    """A Ray error's cause in one line: the first line of its text that is neither Ray's task header
    (`ray::task() (pid=, ip=)`) nor a traceback; for an error in a task, the task's own exception."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # Ray colours its task header
    for line in text.splitlines():
        if line.strip() and not line[0].isspace() and not line.startswith(("ray::", "Traceback", "The above exception")):
            return line.strip()[:400]
    return type(error).__name__


@dataclass(frozen=True)
class Step:
    """One step's reports, over the whole output (across restarts), and what this run did of it."""

    reports: list[dict[str, Any]]
    pieces_now: int  # dumps staged or buckets selected by this run
    rows_now: int


def _workers(ray: Any, options: BatchOptions) -> tuple[int, int]:
    """The cluster's cores and the actors to start, refusing more than the cores can hold."""
    cores = int(ray.cluster_resources().get("CPU", 1))
    workers = options.workers or max(1, cores // options.threads)
    if workers * options.threads > cores:
        raise InputError(
            f"--workers {workers} x --threads {options.threads} needs {workers * options.threads} cores; "
            f"Ray has {cores} (local mode: raise --cpus, or lower --workers/--threads)"
        )
    return cores, workers


def _stage(ray: Any, dumps: list[Path], out: Path, options: BatchOptions, timer: Timer) -> tuple[Step, dict[Path, Path]]:
    """Step 1: every dump not staged yet, one task per dump."""
    folders = {dump: out / STAGED / dump_key(dump) for dump in dumps}
    todo = [d for d in dumps if not (folders[d] / DONE).is_file()]
    remove_partial_folders(out / STAGED)
    rows = 0

    def stage_all() -> None:
        nonlocal rows
        task = ray.remote(num_cpus=1)(stage_dump)
        pending = [task.remote(str(d), str(folders[d]), options.buckets, options.limit) for d in todo]
        progress = Progress("stage  ", len(pending), "dumps")
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows += ray.get(ready[0]).get("rows", 0)
            progress.advance(1)
        progress.close()

    if todo:
        timer.run("stage", stage_all)
    return Step([read_json(folders[d] / DONE) for d in dumps], len(todo), rows), folders


def _select(ray: Any, folders: list[Path], out: Path, options: BatchOptions, timer: Timer) -> Step:
    """Step 2: every bucket not selected yet, one task per bucket over its file of every staged dump."""
    assert options.buckets is not None, "run_batch resolves the bucket count"
    work_dir = out / WORK
    markers = [bucket_marker(work_dir, k) for k in range(options.buckets)]
    todo = [k for k, marker in enumerate(markers) if not marker.is_file()]
    rows = 0

    def select_all() -> None:
        nonlocal rows
        task = ray.remote(num_cpus=1)(select_bucket)
        pending = []
        for k in todo:
            files = [str(folder / bucket_file(k)) for folder in folders if (folder / bucket_file(k)).is_file()]
            pending.append(task.remote(k, files, str(work_dir), options.mode, options.selection,
                                       options.rows_per_shard, options.group_size))
        progress = Progress("select ", len(pending), "buckets")
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows += ray.get(ready[0])["rows"]
            progress.advance(1)
        progress.close()

    if todo:
        timer.run("select", select_all)
    return Step([read_json(marker) for marker in markers], len(todo), rows)


def _run(ray: Any, dumps: list[Path], out: Path, bundle: Path, options: BatchOptions, timer: Timer) -> dict[str, Any]:
    cores, workers = _workers(ray, options)
    staged, folders = _stage(ray, dumps, out, options, timer)
    warnings = [problem for report in staged.reports for problem in report["problems"]]
    for warning in warnings:
        say(f"warning: {warning}")
    selected = _select(ray, list(folders.values()), out, options, timer)
    expected = {shard: n for report in selected.reports for shard, n in report["shards"].items()}

    # Step 3: rank the shards that have no output yet
    results = out / RESULTS
    pending = sorted(s for s in expected if not (results / f"{s}.{options.output_format}").is_file())
    ranked = timer.run("rank", lambda: rank_shards(ray, pending, expected, out, bundle, options, workers)) if pending else Ranked()

    # the summary covers the whole output, across restarts; rates cover what this run did
    read: Counter[str] = Counter()
    for report in staged.reports:
        read.update({k: v for k, v in report.items() if isinstance(v, int)})
    skipped: Counter[str] = Counter()
    for report in selected.reports:
        skipped.update(report["skipped"])
    counts = [read_json(shard_counts(out / WORK, s)) for s in sorted(expected)]
    seconds = {k: round(v, 2) for k, v in timer.seconds.items()}
    if pending:
        seconds["rank_first_rows"] = round(ranked.first_seconds, 2)
    rates = {
        "stage_rows_per_s": rate(staged.rows_now, timer.seconds.get("stage")),
        "select_rows_per_s": rate(selected.rows_now, timer.seconds.get("select")),
        "rank_rows_per_s": rate(ranked.rows, timer.seconds.get("rank")),
        # after the first rows came back: without actor start-up and bundle loading
        "rank_rows_per_s_after_start": rate(ranked.rows - ranked.first_rows, timer.seconds.get("rank", 0.0) - ranked.first_seconds),
    }
    return {
        "mode": options.mode,
        "out": str(out),
        "results": str(results),
        "dumps": len(dumps),
        "rows_read": read["read"],
        "rows_staged": read["rows"],
        "bad_rows": {"not_json": read["not_json"], "bad_row": read["bad_row"], "stream_error": read["stream_error"]},
        "skipped": dict(sorted(skipped.items())),
        "output_rows": sum(c["rows"] for c in counts),
        "errors": sum(c["errors"] for c in counts),
        "shards": len(expected),
        "this_run": {"dumps_staged": staged.pieces_now, "buckets_selected": selected.pieces_now, "shards_ranked": len(pending),
                     "rows_ranked": ranked.rows, "workers": workers, "threads": options.threads, "cores": cores},
        "warnings": warnings,
        "seconds": seconds,
        "rates": rates,
    }
