"""Step 1 of a batch run: one dump into Parquet buckets by thread.

A dump (`.zst`, `.bz2`, `.xz`, `.jsonl`) is one stream that cannot be split, so one Ray task reads
it once into Parquet (pyarrow), only the columns ranking needs, cut into buckets by a hash of the
thread. A thread's submission and comments share a bucket, so every parent is in the bucket of
its replies and the join of step 2 needs no shuffle.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dumps import DataError, clean_text, is_submission, iter_rows, read_dump, submission_text
from .layout import DONE, bucket_file, bucket_of, read_json, write_json

if TYPE_CHECKING:
    import pyarrow as pa

STAGED_COLUMNS = ("name", "parent_id", "thread_id", "subreddit", "author", "created_utc", "score", "text")
# Staged rows buffered before a row group goes to every bucket: at least 256 rows a bucket, so
# that row groups are not tiny when there are thousands of buckets.
FLUSH_ROWS = 20_000


def staged_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("name", pa.string()),  # Reddit full name: t1_<id> for a comment, t3_<id> for a submission
        ("parent_id", pa.string()),  # a comment's parent (t1_/t3_), null for a submission
        ("thread_id", pa.string()),  # the submission's bare id
        ("subreddit", pa.string()),
        ("author", pa.string()),
        ("created_utc", pa.int64()),
        ("score", pa.int64()),
        ("text", pa.string()),  # HTML-unescaped and stripped; a submission's title and selftext
    ])


def check_dump(path: Path) -> None:
    """Refuse, with one line naming it, a file that is not a Pushshift dump (before any work starts)."""
    first = next(read_dump(path, limit=1), None)  # DataError for an unknown suffix, bad compression, not JSON
    if first is None:
        return  # an empty dump is a dump: it adds no rows
    if "id" not in first or not any(key in first for key in ("body", "title", "parent_id")):
        keys = ", ".join(sorted(first)[:6])
        raise DataError(f"{path}: not a Pushshift dump (its first object has no id and body or title; keys: {keys})")


def _rows(path: Path, limit: int | None, counts: Counter[str], problems: list[str]) -> Iterator[dict[str, Any]]:
    """The file's JSON objects; a line that is not one is counted (`not_json`), not fatal. A stream
    cut short or corrupted ends the file there: the rows before it are kept and `problems` says so."""
    try:
        yield from iter_rows(path, limit, on_bad_line=lambda _: counts.update(["not_json"]))
    except DataError as error:
        counts["stream_error"] += 1
        problems.append(f"{error}; kept the rows before it")


def staged_row(row: dict[str, Any], file_kind: str) -> tuple[Any, ...] | None:
    """A dump row as the staged columns, or None for a row that lacks what ranking needs."""
    try:
        bare_id = str(row["id"])
        created_utc = int(float(row["created_utc"]))  # some dumps store it as a string
        score = row.get("score")
        score = int(row.get("ups", 0) if score is None else score)  # old dumps may only have ups
        author = str(row.get("author") or "")
        subreddit = str(row.get("subreddit") or "")
        if is_submission(row, file_kind):
            if not isinstance(row["title"], str):
                return None
            text = submission_text(row["title"], row.get("selftext") or "")
            return ("t3_" + bare_id, None, bare_id, subreddit, author, created_utc, score, text)
        parent_id, body = str(row["parent_id"]), row["body"]
        if not isinstance(body, str) or parent_id[:3] not in ("t1_", "t3_"):
            return None
        thread_id = str(row["link_id"]).removeprefix("t3_")
        return ("t1_" + bare_id, parent_id, thread_id, subreddit, author, created_utc, score, clean_text(body))
    except (KeyError, TypeError, ValueError):
        return None


class _BucketWriter:
    """Staged rows by bucket, buffered as columns and written as row groups, one Parquet file per non-empty bucket."""

    def __init__(self, folder: Path, buckets: int):
        self.folder, self.schema = folder, staged_schema()
        self.columns: list[list[list[Any]]] = [[[] for _ in STAGED_COLUMNS] for _ in range(buckets)]
        self.writers: dict[int, Any] = {}
        self.buffered, self.flush_rows = 0, max(FLUSH_ROWS, 256 * buckets)

    def add(self, row: tuple[Any, ...]) -> None:
        for column, value in zip(self.columns[bucket_of(row[2], len(self.columns))], row):
            column.append(value)
        self.buffered += 1
        if self.buffered >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for k, bucket in enumerate(self.columns):
            if not bucket[0]:
                continue
            if k not in self.writers:
                self.writers[k] = pq.ParquetWriter(self.folder / bucket_file(k), self.schema, compression="zstd")
            self.writers[k].write_table(pa.table(bucket, schema=self.schema))
            self.columns[k] = [[] for _ in STAGED_COLUMNS]
        self.buffered = 0

    def close(self) -> None:
        self.flush()
        for writer in self.writers.values():
            writer.close()


def partial_folder(dest: Path) -> Path:
    """A folder for one attempt at staging into `dest`, beside it."""
    return dest.with_name(f"{dest.name}.partial-{uuid.uuid4().hex[:12]}")


def remove_partial_folders(staged_dir: Path) -> None:
    """Remove what attempts cut short left behind; only while no attempt runs."""
    for leftover in staged_dir.glob("*.partial-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def stage_dump(path: str, dest: str, buckets: int, limit: int | None) -> dict[str, Any]:
    """Stream one dump into `dest/b<k>.parquet`, one file per non-empty bucket; returns its counts.

    Written under a folder of this attempt's own (`partial_folder`) and renamed to `dest` with its
    `_done.json` inside, so `dest` exists only complete. Ray runs a task again when its node is
    lost, and the first attempt may still be writing (a node cut off from the cluster is not
    always dead): its own folder keeps the two apart. The driver removes leftovers of killed runs
    (`remove_partial_folders`) before it starts any attempt.
    """
    source, final = Path(path), Path(dest)
    partial = partial_folder(final)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    file_kind = source.name[:3].upper()
    counts: Counter[str] = Counter()
    problems: list[str] = []
    writer = _BucketWriter(partial, buckets)
    for row in _rows(source, limit, counts, problems):
        staged = staged_row(row, file_kind)
        if staged is None:
            counts["bad_row"] += 1
            continue
        counts["rows"] += 1
        writer.add(staged)
    writer.close()
    counts["read"] = counts["rows"] + counts["bad_row"] + counts["not_json"]
    report = {"file": str(source), "seconds": time.perf_counter() - start, "problems": problems, **counts}
    write_json(partial / DONE, report)
    if not (final / DONE).is_file():
        shutil.rmtree(final, ignore_errors=True)  # what a kill left of a staged folder being replaced
        with contextlib.suppress(OSError):  # another attempt renamed its folder first: it is as good as this one
            os.replace(partial, final)
    shutil.rmtree(partial, ignore_errors=True)
    return read_json(final / DONE)
