"""Step 3 of a batch run, on the driver: the Ray Data pipeline over the pending shards, and the commit of each.

Ray Data reads the shards and maps them through `Ranker` actors (`map_batches` over an actor pool,
`num_cpus` cores each = ONNX Runtime's threads, which ignore `OMP_NUM_THREADS`). The driver
collects each shard's rows and commits the shard's output file (temporary name, atomic rename) once
all of them are in. Shards with an output file are skipped on a restart, so every selected row ends
in the output exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..environment import write_atomically
from ..errors import ReplyrankError
from .layout import RESULTS, WORK, shard_counts, write_json
from .options import BatchOptions
from .progress import Progress
from .rank import Ranker, output_schema, read_shards

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Ranked:
    """What the rank step did: rows committed, and when the first rows came back (actor start-up,
    bundle loading, the first block) and how many those were, for the rate after start-up."""

    rows: int = 0
    first_seconds: float = 0.0
    first_rows: int = 0


def _dataset(ray: Any, shards: list[str], work_dir: Path, bundle: Path, options: BatchOptions, workers: int) -> Any:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts committed rows, on stderr
    context.print_on_execution_start = False
    # One item per shard, read by Ray tasks. Not `read_parquet`: it resolves its paths in threads that
    # race on importing fsspec's HTTP filesystem when aiohttp is absent (torch installs fsspec).
    dataset = ray.data.from_items([{"path": str(work_dir / f"{s}.parquet")} for s in shards], override_num_blocks=len(shards))
    # a block per shard; reading takes no reserved core, which all go to the actors (else it would wait for one forever)
    dataset = dataset.map_batches(read_shards, batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2))
    return dataset.map_batches(
        Ranker,
        fn_constructor_kwargs={"bundle": str(bundle), "mode": options.mode, "threads": options.threads, "sampling": options.sampling,
                               "threshold": options.threshold, "strict": options.strict, "seed": options.seed},
        batch_size=options.rows_per_batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),  # actors, each with one loaded bot
        num_cpus=options.threads,  # cores reserved per actor = ONNX Runtime threads, so actors x threads <= cores
    )


class ShardCollector:
    """The ranked rows of each shard as blocks bring them, handed to `commit` once every one of the shard's ids
    is in. Ray may deliver a block twice (a task retried after its node was lost), even after its shard was
    committed: ids are counted, not rows, and a committed shard takes no more rows."""

    def __init__(self, expected: dict[str, int], commit: Callable[[str, pa.Table], int]):
        self.expected, self.commit = expected, commit
        self.waiting: dict[str, list[pa.Table]] = {}
        self.ids: dict[str, set[str]] = {}
        self.committed: set[str] = set()
        self.rows = 0  # rows committed

    def add(self, block: pa.Table) -> int:
        """Take a block of ranked rows; returns how many of its ids are new (for the progress line)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        new = 0
        for shard in set(block.column("shard").to_pylist()) - self.committed:
            part = block.filter(pc.equal(block.column("shard"), shard))
            ids = self.ids.setdefault(shard, set())
            before = len(ids)
            ids.update(part.column("id").to_pylist())
            new += len(ids) - before
            self.waiting.setdefault(shard, []).append(part)
            if len(ids) >= self.expected[shard]:
                self.rows += self.commit(shard, pa.concat_tables(self.waiting.pop(shard)))
                self.committed.add(shard)
                del self.ids[shard]
        return new

    def incomplete(self) -> list[str]:
        return sorted(self.waiting)


def rank_shards(ray: Any, shards: list[str], expected: dict[str, int], out: Path, bundle: Path, options: BatchOptions,
                workers: int) -> Ranked:
    """Map the shards through `Ranker` actors; commit each shard's output file once all its rows are in."""
    results = out / RESULTS
    for leftover in results.glob(".*.tmp"):  # a commit cut short by a kill; the shard is ranked again
        leftover.unlink()
    dataset = _dataset(ray, shards, out / WORK, bundle, options, workers)
    schema = output_schema(options.mode)
    collector = ShardCollector(expected, lambda shard, table: commit_shard(shard, table.cast(schema), expected[shard], out, options))
    progress = Progress("rank   ", sum(expected[s] for s in shards), "rows")
    start, first = time.perf_counter(), Ranked()
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if block.num_rows == 0:
            continue
        if not first.first_rows:
            first = Ranked(0, time.perf_counter() - start, block.num_rows)
        progress.advance(collector.add(block))
    progress.close()
    if collector.incomplete():
        raise ReplyrankError(f"shards {collector.incomplete()} came back incomplete; run the same command again to finish them")
    return Ranked(collector.rows, first.first_seconds, first.first_rows)


def commit_shard(shard: str, table: pa.Table, expected: int, out: Path, options: BatchOptions) -> int:
    """Write one shard's output: its counts, then its rows under a temporary name renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):  # keep every id once
        first = {row_id: i for i, row_id in reversed(list(enumerate(ids)))}
        table = table.take(pa.array(sorted(first.values())))
    if table.num_rows != expected:
        raise ReplyrankError(f"shard {shard}: {table.num_rows} rows ranked, {expected} expected")
    table = table.sort_by("id")
    errors = table.num_rows - table.column("error").null_count
    # the counts first: a shard is done once its data file exists, and then its counts exist too
    write_json(shard_counts(out / WORK, shard), {"rows": table.num_rows, "errors": errors})
    path = out / RESULTS / f"{shard}.{options.output_format}"
    if options.output_format == "parquet":
        write_atomically(path, lambda p: pq.write_table(table, p, compression="zstd"))
    else:
        write_atomically(path, lambda p: p.write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()), encoding="utf-8"))
    return table.num_rows
