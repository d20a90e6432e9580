"""Step 2 of a batch run: one bucket's staged rows filtered, deduplicated and joined into work shards.

The filters are training's (deleted, bots, text length: `dumps.Filters`) and the batch's own
(minimum score, subreddits, time range: `Selection`). In score mode every reply is joined to its
parent's text; the parent is in the same bucket because staging buckets by thread. The rows to
rank are written as shards of at most `shard_rows` outputs, sorted by id, so the same input
always gives the same shards; the bucket's marker, written last, commits them.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..environment import write_atomically
from .layout import bucket_marker, shard_name, write_json
from .options import Selection
from .stage import STAGED_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

Rows = dict[str, list[Any]]  # staged columns by name
Unit = dict[str, Any]  # one row of a work shard, with `outputs`: the output rows it gives


def work_schema(mode: str) -> pa.Schema:
    import pyarrow as pa

    common = [("shard", pa.string()), ("subreddit", pa.string()), ("thread_id", pa.string())]
    if mode == "reply":
        return pa.schema([*common, ("id", pa.string()), ("created_utc", pa.int64()), ("score", pa.int64()), ("text", pa.string())])
    return pa.schema([
        *common,
        ("group", pa.string()),  # parent_id, with #<k> when a parent's replies fill several groups
        ("parent_id", pa.string()),
        ("parent_text", pa.string()),
        ("reply_ids", pa.list_(pa.string())),
        ("reply_texts", pa.list_(pa.string())),
        ("reply_scores", pa.list_(pa.int64())),
        ("reply_created", pa.list_(pa.int64())),
    ])


def select_bucket(
    bucket: int, staged: list[str], work_dir: str, mode: str, selection: Selection, shard_rows: int, group_size: int
) -> dict[str, Any]:
    """Filter, deduplicate and (score mode) join one bucket's staged rows into work shards.

    Writes `work_dir/<bucket>-<part>.parquet` and then the bucket's marker `work_dir/b<bucket>.json`,
    which lists the shards with the number of outputs each will give, and the skipped rows by reason.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    tables = [pq.read_table(path) for path in staged]
    rows: Rows = pa.concat_tables(tables).to_pydict() if tables else {name: [] for name in STAGED_COLUMNS}
    skipped: Counter[str] = Counter()
    unique = _unique(rows, skipped)
    if mode == "reply":
        units = _reply_units(rows, unique, selection, skipped)
    else:
        units = _score_units(rows, unique, selection, group_size, skipped)
    units.sort(key=lambda unit: unit.get("id") or unit["group"])
    shards = _write_shards(units, bucket, Path(work_dir), work_schema(mode), shard_rows)
    report = {"bucket": bucket, "rows": len(rows["name"]), "shards": shards, "skipped": dict(skipped),
              "seconds": time.perf_counter() - start}
    write_json(bucket_marker(Path(work_dir), bucket), report)
    return report


def _unique(rows: Rows, skipped: Counter[str]) -> list[int]:
    """Indexes of each row's first copy: a dump may hold a row twice, and two dumps may overlap."""
    seen: set[str] = set()
    unique: list[int] = []
    for i, name in enumerate(rows["name"]):
        if name in seen:
            skipped["duplicate"] += 1
        else:
            seen.add(name)
            unique.append(i)
    return unique


def _selected(rows: Rows, i: int, selection: Selection) -> str | None:
    """Why row i is not ranked, or None."""
    return selection.reason(rows["text"][i], rows["author"][i], rows["subreddit"][i], rows["created_utc"][i], rows["score"][i])


def _reply_units(rows: Rows, unique: list[int], selection: Selection, skipped: Counter[str]) -> list[Unit]:
    """Reply mode: every selected row is a comment (or submission) to reply to."""
    units = []
    for i in unique:
        why = _selected(rows, i, selection)
        if why is not None:
            skipped[why] += 1
            continue
        units.append({"subreddit": rows["subreddit"][i], "thread_id": rows["thread_id"][i], "id": rows["name"][i],
                      "created_utc": rows["created_utc"][i], "score": rows["score"][i], "text": rows["text"][i], "outputs": 1})
    return units


def _score_units(rows: Rows, unique: list[int], selection: Selection, group_size: int, skipped: Counter[str]) -> list[Unit]:
    """Score mode: the selected replies of each parent, in groups of at most `group_size` siblings.

    A parent needs only training's text filter (a reply to an old or low-scored comment is still
    ranked); the selection applies to the replies."""
    parents: dict[str, str] = {}  # usable texts by full name
    dropped: set[str] = set()
    for i in unique:
        if selection.text.drop_reason(rows["text"][i], rows["author"][i]) is None:
            parents[rows["name"][i]] = rows["text"][i]
        else:
            dropped.add(rows["name"][i])
    replies: dict[str, list[int]] = {}
    for i in unique:
        parent_id = rows["parent_id"][i]
        if parent_id is None:
            skipped["submission"] += 1  # a parent only: submissions are not replies
            continue
        why = _selected(rows, i, selection)
        if why is None and parent_id not in parents:
            why = "parent_filtered" if parent_id in dropped else "no_parent"
        if why is not None:
            skipped[why] += 1
            continue
        replies.setdefault(parent_id, []).append(i)
    units = []
    for parent_id, members in replies.items():
        members.sort(key=lambda i: (rows["created_utc"][i], rows["name"][i]))  # siblings close in time share a group
        chunks = [members[j : j + group_size] for j in range(0, len(members), group_size)]
        for k, chunk in enumerate(chunks):
            first = chunk[0]
            units.append({
                "subreddit": rows["subreddit"][first], "thread_id": rows["thread_id"][first],
                "group": parent_id if len(chunks) == 1 else f"{parent_id}#{k}", "parent_id": parent_id,
                "parent_text": parents[parent_id], "reply_ids": [rows["name"][i] for i in chunk],
                "reply_texts": [rows["text"][i] for i in chunk], "reply_scores": [rows["score"][i] for i in chunk],
                "reply_created": [rows["created_utc"][i] for i in chunk], "outputs": len(chunk),
            })
    return units


def _write_shards(units: list[Unit], bucket: int, work_dir: Path, schema: pa.Schema, shard_rows: int) -> dict[str, int]:
    """Cut the units into shards of at most `shard_rows` outputs (a group is never split); returns outputs by shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards: dict[str, int] = {}
    parts: list[list[Unit]] = []
    outputs = 0
    for unit in units:
        if not parts or outputs + unit["outputs"] > shard_rows:
            parts.append([])
            outputs = 0
        parts[-1].append(unit)
        outputs += unit["outputs"]
    for number, part in enumerate(parts):
        shard = shard_name(bucket, number)
        for unit in part:
            unit["shard"] = shard
        table = pa.Table.from_pylist(part, schema=schema)  # `outputs` is not in the schema: dropped
        write_atomically(work_dir / f"{shard}.parquet", lambda p: pq.write_table(table, p, row_group_size=64))
        shards[shard] = sum(unit["outputs"] for unit in part)
    return shards
