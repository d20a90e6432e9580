"""Where a batch run keeps its state in its output folder, and how each piece is committed.

    OUT/batch.json            the settings the run was started with; a restart must match them
    OUT/staged/<dump>/        one dump as Parquet buckets, with _done.json (renamed into place whole)
    OUT/work/b<k>.json        bucket k selected: its shards and skipped rows (written last)
    OUT/work/<shard>.parquet  rows to rank;  OUT/work/<shard>.done.json: its output's counts
    OUT/results/<shard>.*     the output, one file per shard (renamed into place whole)
    OUT/summary.json          the last run's summary

Every file is written under a temporary name and renamed, so a killed run leaves whole files or
none, and the same command started again redoes only the piece it was in.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

from ..environment import write_atomically

SETTINGS = "batch.json"
SUMMARY = "summary.json"
STAGED, WORK, RESULTS = "staged", "work", "results"
DONE = "_done.json"  # inside a staged dump's folder
# Of dump file per bucket: a row of a zstd dump takes ~200-500 bytes, so a bucket holds what one
# select task can keep in memory.
BUCKET_BYTES = 16 * 2**20
MIN_BUCKETS, MAX_BUCKETS = 8, 4096


def auto_buckets(paths: list[Path], limit: int | None) -> int:
    """Buckets for these dumps: one per `BUCKET_BYTES` of file, `MIN_BUCKETS` to `MAX_BUCKETS`."""
    size = sum(min(p.stat().st_size, limit * 500) if limit else p.stat().st_size for p in paths)
    return max(MIN_BUCKETS, min(MAX_BUCKETS, -(-size // BUCKET_BYTES)))


def bucket_of(thread_id: str, buckets: int) -> int:
    """The bucket of a thread: the same on every machine and run (Python's hash() is salted)."""
    return zlib.crc32(thread_id.encode()) % buckets


def bucket_file(bucket: int) -> str:
    """A staged bucket's file name inside its dump's folder."""
    return f"b{bucket:04d}.parquet"


def bucket_marker(work_dir: Path, bucket: int) -> Path:
    """Written last by the bucket's select task: the bucket is done once it exists."""
    return work_dir / f"b{bucket:04d}.json"


def shard_name(bucket: int, part: int) -> str:
    return f"{bucket:04d}-{part:04d}"


def shard_counts(work_dir: Path, shard: str) -> Path:
    """A ranked shard's row and error counts, beside its work file (results/ holds only data files)."""
    return work_dir / f"{shard}.done.json"


def dump_key(path: Path) -> str:
    """A staging folder name for a dump: its name and a hash of its absolute path (two RC_x.zst may exist)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{path.name}-{digest}"


def write_json(path: Path, data: Any) -> None:
    write_atomically(path, lambda p: p.write_text(json.dumps(data, indent=1, default=str) + "\n"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
