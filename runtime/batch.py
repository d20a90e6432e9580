"""`replyrank batch`: rank a whole Pushshift dump on Ray Data, on one machine or a cluster.

A month of Reddit is about 100M comments, far more than one process should loop over. This
module hands the work to Ray Data, the pattern its docs give for batch inference: `map_batches`
with a callable class whose `__init__` loads the model once per actor and whose `__call__` maps
a batch to a batch, parallel by the actor pool's size (`compute=ActorPoolStrategy(size=K)`, which
Ray 2.51 made the spelling of `concurrency=K`) and `num_cpus=` (cores per actor), with ONNX
Runtime's own thread count set to those cores (it ignores `OMP_NUM_THREADS`).

The run has three steps, each committed in pieces so that a killed run started again with the
same command redoes only the piece it was in:

1. **stage**: each dump (`.zst`, `.bz2`, `.xz`, `.jsonl`) is one stream that cannot be split, so it is
   read once, by one Ray task, into Parquet (pyarrow), only the columns ranking needs, cut into
   `buckets` files by a hash of the thread. A thread's submission and comments share a bucket,
   so every parent is in the bucket of its replies and the join below needs no shuffle.
   Committed per dump: written under a `.partial` name, renamed when complete.
2. **select**: one Ray task per bucket applies the filters (as in training: deleted, bots, text
   length, and the batch's minimum score, subreddits and time range), drops duplicate rows, joins
   replies to their parents (`--mode score`), and writes the rows to rank as shards of at most
   `shard_rows` outputs. Committed per bucket by a marker written last.
3. **rank**: Ray Data reads the pending shards and maps them through `Ranker` actors; the driver
   collects each shard's rows and commits the shard's output file (temporary name, atomic
   rename) once all of them are in. Shards with an output file are skipped on a restart, so
   every selected row ends in the output exactly once.

`--mode reply` writes a reply to every selected comment (or submission): the pick and every
candidate's scores. `--mode score` ranks the real replies of every parent, as `Bot.score` ranks
replies written elsewhere: which one replyrank would have picked, and each one's realism and
predicted upvotes, next to its real Reddit score: the ranking evaluation at the scale of a dump.

Needs the `batch` extra (`pip install 'replyrank[batch]'`: Ray Data and pyarrow); without it this
module still imports, and the command says how to install it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .dumps import DataError, Filters, read_dump
from .errors import BundleError, InputError, ReplyrankError
from .generate import GenerationOptions

# Private helpers of dumps.py, imported rather than copied so that "filtered as in training" has one
# definition: the decompressing line reader (2 GiB zstd window, truncation check), the text cleaner
# and the drop rule of `Filters`. The lead has been asked for public names for them.
from .dumps import _binary_lines, _clean, _drop_reason  # noqa: I001

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_EXTRA = "pip install 'replyrank[batch]'"
MODES = ("reply", "score")
FORMATS = ("parquet", "jsonl")
SETTINGS = "batch.json"  # what the run in a folder was started with; a restart must match it
SUMMARY = "summary.json"
STAGED, WORK, RESULTS = "staged", "work", "results"
DONE = "_done.json"
MAX_GROUP = 64  # replies Bot.score ranks in one call (one batch through the scorers)
_FLUSH_ROWS = 20_000  # staged rows buffered before a row group is written to every bucket (at least 256 a bucket)
BUCKET_BYTES = 16 * 2**20  # of dump file per bucket: ~50k-100k rows of a zstd dump, what one select task holds
_DELETED = frozenset({"[deleted]", "[removed]", "[deleted by user]"})  # as dumps.py, for a submission's selftext


def missing_extra() -> str | None:
    """The first package of the batch extra that is not installed, or None."""
    for name in ("ray", "pyarrow"):
        try:
            if sys.modules.get(name, False) is None or importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


@dataclass(frozen=True)
class Selection:
    """Which rows are ranked. `text` is training's filter (deleted, bots, length); the rest apply to
    the row ranked: the comment replied to (`reply`), or the real reply (`score`)."""

    text: Filters = Filters()
    min_score: int | None = None
    subreddits: tuple[str, ...] = ()  # lower case; empty: all
    since: int | None = None  # created_utc >= since (seconds since the epoch, UTC)
    until: int | None = None  # created_utc < until

    def __post_init__(self) -> None:
        object.__setattr__(self, "subreddits", tuple(name.lower() for name in self.subreddits))

    def reason(self, text: str, author: str, subreddit: str, created_utc: int, score: int) -> str | None:
        """Why a row is not ranked, or None."""
        reason = _drop_reason(text, author, self.text)
        if reason is not None:
            return reason
        if self.subreddits and subreddit.lower() not in self.subreddits:
            return "subreddit"
        if (self.since is not None and created_utc < self.since) or (self.until is not None and created_utc >= self.until):
            return "time_range"
        if self.min_score is not None and score < self.min_score:
            return "min_score"
        return None


@dataclass(frozen=True)
class BatchOptions:
    """Everything a run is started with. Fields up to `seed` decide what the output holds and must
    match on a restart (`batch.json`); the rest only decide how fast it is made."""

    mode: str = "reply"
    selection: Selection = Selection()
    # reply mode: sampling options that replace the bundle's deployment ones (`Bot.sampling`), e.g.
    # {"candidates": 4}; the rest stay the bundle's. `seed` is drawn per row from `seed` below.
    sampling: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    strict: bool = False
    limit: int | None = None  # rows read from each dump (None: all)
    buckets: int | None = None  # None: one per 16 MiB of dump (`auto_buckets`), 8 to 4096
    shard_rows: int | None = None  # outputs per committed shard (None: 256 for reply, 4096 for score)
    group_size: int = MAX_GROUP
    output_format: str = "parquet"
    seed: int = 0
    # how, not what
    address: str | None = None  # a running Ray cluster; None starts a local one
    cpus: int | None = None  # local mode: cores Ray may use (default: all this process may use)
    workers: int | None = None  # actors, one loaded bot each (default: cores // threads)
    threads: int = 1  # ONNX Runtime intra-op threads per actor = num_cpus reserved per actor
    batch_size: int | None = None  # rows per map_batches call (default: 8 for reply, 16 groups for score)

    def check(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.output_format not in FORMATS:
            raise InputError(f"format must be one of {', '.join(FORMATS)}, got {self.output_format!r}")
        if self.threads < 1:
            raise InputError(f"threads must be at least 1, got {self.threads}")
        for name in ("buckets", "shard_rows", "batch_size", "workers", "cpus", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        if not 1 <= self.group_size <= MAX_GROUP:
            raise InputError(f"group-size must be between 1 and {MAX_GROUP}, got {self.group_size}")
        if self.mode == "reply":
            unknown = set(self.sampling) - {f.name for f in fields(GenerationOptions)} | ({"seed"} & set(self.sampling))
            if unknown:
                raise InputError(f"sampling options {sorted(unknown)} are not GenerationOptions fields (the seed is set per row)")
            replace(GenerationOptions(), **self.sampling).check()

    def settings(self) -> dict[str, Any]:
        """The part of the options that decides the output, as JSON."""
        data = asdict(self)
        for name in ("address", "cpus", "workers", "threads", "batch_size", *(("sampling",) if self.mode == "score" else ())):
            data.pop(name)
        data["shard_rows"] = self.rows_per_shard
        return json.loads(json.dumps(data, default=list))

    @property
    def rows_per_shard(self) -> int:
        return self.shard_rows or (256 if self.mode == "reply" else 4096)

    @property
    def rows_per_batch(self) -> int:
        return self.batch_size or (8 if self.mode == "reply" else 16)


# ---------------------------------------------------------------------------------------------
# Step 1: stage dumps into Parquet
# ---------------------------------------------------------------------------------------------

STAGED_COLUMNS = ("name", "parent_id", "thread_id", "subreddit", "author", "created_utc", "score", "text")


def _staged_schema() -> pa.Schema:
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


def _lines(path: Path, limit: int | None, counts: Counter[str], problems: list[str]) -> Iterator[dict[str, Any]]:
    """The file's JSON objects; a line that is not one is counted (`not_json`), not fatal. A stream
    cut short or corrupted ends the file there: the rows before it are kept and `problems` says so."""
    import zstandard

    read = 0
    with path.open("rb") as raw:
        lines = _binary_lines(raw, path)
        while limit is None or read < limit:
            try:
                line = next(lines, None)
            except (zstandard.ZstdError, OSError, EOFError, ValueError) as error:
                counts["stream_error"] += 1
                problems.append(f"{path}: stream ends early after {read} rows, kept those ({error})")
                return
            if line is None:
                return
            if not line.strip():
                continue
            read += 1
            try:
                row = json.loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                counts["not_json"] += 1
                continue
            if not isinstance(row, dict):
                counts["not_json"] += 1
                continue
            yield row


def _staged_row(row: dict[str, Any], file_kind: str) -> tuple[Any, ...] | None:
    """A dump row as the staged columns, or None for a row that lacks what ranking needs."""
    try:
        bare_id = str(row["id"])
        created_utc = int(float(row["created_utc"]))  # some dumps store it as a string
        score = row.get("score")
        score = int(row.get("ups", 0) if score is None else score)  # old dumps may only have ups
        author = str(row.get("author") or "")
        subreddit = str(row.get("subreddit") or "")
        if "title" in row or ("body" not in row and "parent_id" not in row and file_kind == "RS_"):
            if not isinstance(row["title"], str):
                return None
            title, selftext = _clean(row["title"]), _clean(row.get("selftext") or "")
            # a removed selftext leaves the title, which is still what repliers answered
            text = title if not selftext or selftext in _DELETED else f"{title}\n\n{selftext}"
            return ("t3_" + bare_id, None, bare_id, subreddit, author, created_utc, score, text)
        parent_id, body = str(row["parent_id"]), row["body"]
        if not isinstance(body, str) or parent_id[:3] not in ("t1_", "t3_"):
            return None
        thread_id = str(row["link_id"]).removeprefix("t3_")
        return ("t1_" + bare_id, parent_id, thread_id, subreddit, author, created_utc, score, _clean(body))
    except (KeyError, TypeError, ValueError):
        return None


def auto_buckets(paths: list[Path], limit: int | None) -> int:
    """Buckets for these dumps: one per `BUCKET_BYTES` of file (a row of a dump takes ~200-500 bytes), 8 to 4096."""
    size = sum(min(p.stat().st_size, limit * 500) if limit else p.stat().st_size for p in paths)
    return max(8, min(4096, -(-size // BUCKET_BYTES)))


def bucket_of(thread_id: str, buckets: int) -> int:
    """The bucket of a thread: the same on every machine and run (Python's hash() is salted)."""
    return zlib.crc32(thread_id.encode()) % buckets


def stage_dump(path: str, dest: str, buckets: int, limit: int | None) -> dict[str, Any]:
    """Stream one dump into `dest/b<k>.parquet`, one file per non-empty bucket; returns its counts.

    Written under `dest.partial` and renamed to `dest` with its `_done.json` inside, so `dest`
    exists only complete; a leftover `.partial` from a killed run is removed first.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    source, final = Path(path), Path(dest)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    schema = _staged_schema()
    file_kind = source.name[:3].upper()
    counts: Counter[str] = Counter()
    problems: list[str] = []
    columns: list[list[list[Any]]] = [[[] for _ in STAGED_COLUMNS] for _ in range(buckets)]
    writers: dict[int, pq.ParquetWriter] = {}
    buffered, flush_rows = 0, max(_FLUSH_ROWS, 256 * buckets)  # row groups of ~256 rows or more

    def flush() -> None:
        for k, bucket in enumerate(columns):
            if not bucket[0]:
                continue
            if k not in writers:
                writers[k] = pq.ParquetWriter(partial / f"b{k:04d}.parquet", schema, compression="zstd")
            writers[k].write_table(pa.table(bucket, schema=schema))
            columns[k] = [[] for _ in STAGED_COLUMNS]

    for row in _lines(source, limit, counts, problems):
        staged = _staged_row(row, file_kind)
        if staged is None:
            counts["bad_row"] += 1
            continue
        counts["rows"] += 1
        for column, value in zip(columns[bucket_of(staged[2], buckets)], staged):
            column.append(value)
        buffered += 1
        if buffered >= flush_rows:
            flush()
            buffered = 0
    flush()
    for writer in writers.values():
        writer.close()
    counts["read"] = counts["rows"] + counts["bad_row"] + counts["not_json"]
    report = {"file": str(source), "seconds": time.perf_counter() - start, "problems": problems, **counts}
    _write_json(partial / DONE, report)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    return report


# ---------------------------------------------------------------------------------------------
# Step 2: select the rows to rank, per bucket
# ---------------------------------------------------------------------------------------------


def _work_schema(mode: str) -> pa.Schema:
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

    Writes `work_dir/<bucket>-<part>.parquet` and then `work_dir/b<bucket>.json`, which lists the
    shards with the number of outputs each will give, and the skipped rows by reason. Shard rows
    are sorted by id, so the same input always gives the same shards.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    tables = [pq.read_table(path) for path in staged]
    rows = pa.concat_tables(tables).to_pydict() if tables else {name: [] for name in STAGED_COLUMNS}
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    unique: list[int] = []
    for i, name in enumerate(rows["name"]):
        if name in seen:
            skipped["duplicate"] += 1  # the same row in two files, or twice in one
        else:
            seen.add(name)
            unique.append(i)

    def reason(i: int, with_selection: bool) -> str | None:
        if not with_selection:
            return _drop_reason(rows["text"][i], rows["author"][i], selection.text)
        return selection.reason(rows["text"][i], rows["author"][i], rows["subreddit"][i], rows["created_utc"][i], rows["score"][i])

    units: list[dict[str, Any]] = []  # one per row of a work shard, with `outputs` = rows it gives
    if mode == "reply":
        for i in unique:
            why = reason(i, True)
            if why is not None:
                skipped[why] += 1
                continue
            units.append({"subreddit": rows["subreddit"][i], "thread_id": rows["thread_id"][i], "id": rows["name"][i],
                          "created_utc": rows["created_utc"][i], "score": rows["score"][i], "text": rows["text"][i], "outputs": 1})
    else:
        parents: dict[str, str] = {}  # usable texts by full name
        dropped: set[str] = set()
        for i in unique:
            if reason(i, False) is None:
                parents[rows["name"][i]] = rows["text"][i]
            else:
                dropped.add(rows["name"][i])
        replies: dict[str, list[int]] = {}
        for i in unique:
            if rows["parent_id"][i] is None:
                skipped["submission"] += 1  # a parent only: submissions are not replies
                continue
            why = reason(i, True)
            if why is None and rows["parent_id"][i] not in parents:
                why = "parent_filtered" if rows["parent_id"][i] in dropped else "no_parent"
            if why is not None:
                skipped[why] += 1
                continue
            replies.setdefault(rows["parent_id"][i], []).append(i)
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
    units.sort(key=lambda unit: unit.get("id") or unit["group"])
    schema = _work_schema(mode)
    shards: dict[str, int] = {}
    part: list[dict[str, Any]] = []
    outputs = 0

    def write_part() -> None:
        shard = f"{bucket:04d}-{len(shards):04d}"
        for unit in part:
            unit["shard"] = shard
        table = pa.Table.from_pylist(part, schema=schema)  # `outputs` is not in the schema: dropped
        _write_atomically(Path(work_dir) / f"{shard}.parquet", lambda p: pq.write_table(table, p, row_group_size=64))
        shards[shard] = outputs

    for unit in units:
        if part and outputs + unit["outputs"] > shard_rows:
            write_part()
            part, outputs = [], 0
        part.append(unit)
        outputs += unit["outputs"]
    if part:
        write_part()
    report = {"bucket": bucket, "rows": len(rows["name"]), "shards": shards, "skipped": dict(skipped),
              "seconds": time.perf_counter() - start}
    _write_json(Path(work_dir) / f"b{bucket:04d}.json", report)
    return report


# ---------------------------------------------------------------------------------------------
# Step 3: rank, one loaded bot per actor
# ---------------------------------------------------------------------------------------------


def _candidate_columns() -> dict[str, Any]:
    import pyarrow as pa

    return {"text": pa.string(), "realism": pa.float64(), "upvotes": pa.float64(), "upvote_chance": pa.float64(),
            "pick_score": pa.float64(), "kept": pa.bool_(), "reason": pa.string(), "finish_reason": pa.string()}


def output_schema(mode: str) -> pa.Schema:
    """The columns of the output files. `id` is the input row's Reddit full name (t1_/t3_)."""
    import pyarrow as pa

    common = [("id", pa.string()), ("shard", pa.string()), ("subreddit", pa.string()), ("thread_id", pa.string()),
              ("created_utc", pa.int64()), ("score", pa.int64())]
    if mode == "reply":
        candidate = pa.struct(list(_candidate_columns().items()))  # `Candidate`'s fields
        return pa.schema([
            *common,
            ("reply", pa.string()),  # the pick's text; null when none was kept (strict) or on error
            ("realism", pa.float64()),  # the pick's discriminator probability, 0-1
            ("upvotes", pa.float64()),  # the pick's predicted upvotes, on the bundle's scale
            ("pick_score", pa.float64()),  # what selection ranked it by (realism x upvote chance)
            ("note", pa.string()),
            ("reason", pa.string()),
            ("truncated", pa.bool_()),
            ("candidates", pa.list_(candidate)),  # best first, dropped ones with their reason
            ("ms", pa.float64()),  # generate + score time of the row
            ("error", pa.string()),  # set when the row could not be ranked; the other fields are null
        ])
    return pa.schema([
        *common,  # score: the reply's real Reddit score
        ("parent_id", pa.string()),
        ("group", pa.string()),
        ("realism", pa.float64()),
        ("upvotes", pa.float64()),
        ("upvote_chance", pa.float64()),  # calibrated chance of a score above the group's median reply
        ("pick_score", pa.float64()),  # realism x upvote chance: what selection ranks kept replies by
        ("kept", pa.bool_()),  # passed replyrank's selection
        ("reason", pa.string()),  # why not
        ("rank", pa.int32()),  # replyrank's order within the group, 1 = the pick
        ("picked", pa.bool_()),  # rank 1 and kept: the reply replyrank would have chosen
        ("siblings", pa.int32()),  # replies in the group
        ("score_rank", pa.int32()),  # order by real score within the group, 1 = highest (ties share)
        ("error", pa.string()),
    ])


def read_shards(batch: dict[str, Any]) -> pa.Table:
    """Work rows of the shard files named in `batch["path"]`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(path) for path in batch["path"]])


def row_seed(seed: int, row_id: str) -> int:
    """A row's own seed: its candidates are the same whichever shard, worker or restart ranks it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{row_id}".encode()).digest()[:8], "big") >> 1


def _candidates(ranked: Any) -> list[Any]:
    """`Bot.score`'s candidates, whether it returns them as a list or in a result object."""
    return list(getattr(ranked, "candidates", ranked))


class Ranker:
    """The map_batches callable: one loaded `Bot` per actor, batches of work rows in, output rows out."""

    def __init__(self, bundle: str, mode: str, threads: int, sampling: dict[str, Any], threshold: float | None,
                 strict: bool, seed: int):
        from .bot import Bot

        self.bot = Bot(bundle, threads=threads, realism_threshold=threshold, strict=strict)
        self.mode, self.seed = mode, seed
        self.sampling = {**sampling, **({"stop": tuple(sampling["stop"])} if "stop" in sampling else {})}
        self.schema = output_schema(mode)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        out: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            out += self._reply(row) if self.mode == "reply" else self._score(row)
        return pa.Table.from_pylist(out, schema=self.schema)

    def _reply(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        base = {key: row[key] for key in ("id", "shard", "subreddit", "thread_id", "created_utc", "score")}
        try:
            result = self.bot.reply(row["text"], None, **self.sampling, seed=row_seed(self.seed, row["id"]))
        except Exception as error:  # one bad row is counted in the summary, not the end of the run
            return [{**base, "error": f"{type(error).__name__}: {error}"}]
        best = result.best
        columns = _candidate_columns()
        return [{
            **base, "reply": best.text if best else None, "realism": best.realism if best else None,
            "upvotes": best.upvotes if best else None, "pick_score": getattr(best, "pick_score", None),
            "note": result.note, "reason": result.reason, "truncated": result.truncated,
            "candidates": [{name: getattr(c, name, None) for name in columns} for c in result.candidates],
            "ms": result.timings_ms.get("total"), "error": None,
        }]

    def _score(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        ids, texts, scores = row["reply_ids"], row["reply_texts"], row["reply_scores"]
        bases = [{"id": reply_id, "shard": row["shard"], "subreddit": row["subreddit"], "thread_id": row["thread_id"],
                  "created_utc": created, "score": score, "parent_id": row["parent_id"], "group": row["group"],
                  "siblings": len(ids), "score_rank": 1 + sum(other > score for other in scores)}
                 for reply_id, created, score in zip(ids, row["reply_created"], scores)]
        try:
            ranked = _candidates(self.bot.score(row["parent_text"], list(texts)))
        except Exception as error:
            return [{**base, "error": f"{type(error).__name__}: {error}"} for base in bases]
        # candidates come back best first, by text; give each its reply back. Of equal texts the
        # first one posted is the one scored (the others are duplicates) and it sorts first too.
        unused: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            unused.setdefault(text, []).append(i)
        if sorted(c.text for c in ranked) != sorted(texts):
            message = "ReplyrankError: Bot.score returned candidates that are not the replies given"
            return [{**base, "error": message} for base in bases]
        out = []
        for rank, candidate in enumerate(ranked, 1):
            i = unused[candidate.text].pop(0)
            out.append({**bases[i], "realism": candidate.realism, "upvotes": candidate.upvotes,
                        "upvote_chance": getattr(candidate, "upvote_chance", None),
                        "pick_score": getattr(candidate, "pick_score", None), "kept": candidate.kept,
                        "reason": candidate.reason, "rank": rank, "picked": rank == 1 and candidate.kept, "error": None})
        return out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    _write_atomically(path, lambda p: p.write_text(json.dumps(data, indent=1, default=str) + "\n"))


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through `write(tmp)`, then rename: readers (and a restart) see the whole file or none."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _dump_key(path: Path) -> str:
    """A staging folder name for a dump: its name and a hash of its absolute path (two RC_x.zst may exist)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    return f"{path.name}-{digest}"


class Progress:
    """One line on stderr: redrawn in place on a terminal, printed every `every` seconds otherwise."""

    def __init__(self, label: str, total: int, unit: str, every: float = 10.0):
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done, self.start, self.shown = 0, time.perf_counter(), 0.0
        self.tty = sys.stderr.isatty()

    def advance(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if not (force or self.tty or now - self.shown >= self.every or self.done >= self.total):
            return
        self.shown = now
        rate = self.done / max(now - self.start, 1e-9)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        eta = f", {(self.total - self.done) / rate:.0f} s left" if rate > 0 and self.done < self.total else ""
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} {self.unit} ({rate:,.1f}/s{eta})"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class _Timer:
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, function: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return function()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _check_bundle(bundle: Path) -> None:
    """Open the bundle once here, so a broken one is one line now, not an actor failure later."""
    from .bot import Bot

    if not (bundle / "replyrank.json").is_file():
        raise BundleError(f"no bundle at {bundle}: give --bundle DIR, or build the default one with `replyrank build-default`")
    Bot(bundle, threads=1)


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
    _check_bundle(bundle)
    if options.buckets is None:
        options = replace(options, buckets=auto_buckets(dumps, options.limit))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        return _run_locked(dumps, out, bundle, options)


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


def _run_locked(dumps: list[Path], out: Path, bundle: Path, options: BatchOptions) -> dict[str, Any]:
    settings = {"replyrank_batch": 1, "data": [str(d) for d in dumps], "bundle": str(bundle), **options.settings()}
    settings_file = out / SETTINGS
    if settings_file.is_file():
        before = json.loads(settings_file.read_text())
        if before != settings:
            changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
            raise InputError(
                f"{out} holds a run started with other settings ({', '.join(changed)}); "
                "run the same command to resume it, or give another --out"
            )
    else:
        _write_json(settings_file, settings)
    for folder in (STAGED, WORK, RESULTS):
        (out / folder).mkdir(exist_ok=True)

    import ray

    timer = _Timer()
    started_here = False
    if not ray.is_initialized():
        if options.address:
            timer.run("ray_start", lambda: ray.init(address=options.address, logging_level="warning", log_to_driver=False))
        else:
            cpus = options.cpus or len(os.sched_getaffinity(0))
            timer.run("ray_start", lambda: ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning",
                                                    log_to_driver=False))
        started_here = True
    try:
        summary = _run(ray, dumps, out, bundle, options, timer)
    finally:
        if started_here:
            ray.shutdown()
    summary["seconds"]["ray_start"] = round(timer.seconds.get("ray_start", 0.0), 2)
    _write_json(out / SUMMARY, summary)
    return summary


def _cores(ray: Any) -> int:
    return int(ray.cluster_resources().get("CPU", 1))


def _run(ray: Any, dumps: list[Path], out: Path, bundle: Path, options: BatchOptions, timer: _Timer) -> dict[str, Any]:
    buckets = options.buckets
    assert buckets is not None, "run_batch resolves the bucket count"
    cores = _cores(ray)
    workers = options.workers or max(1, cores // options.threads)
    if workers * options.threads > cores:
        raise InputError(
            f"--workers {workers} x --threads {options.threads} needs {workers * options.threads} cores; "
            f"Ray has {cores} (local mode: raise --cpus, or lower --workers/--threads)"
        )

    # 1. stage every dump not staged yet, one task per dump
    staged_dirs = {dump: out / STAGED / _dump_key(dump) for dump in dumps}
    todo = [d for d in dumps if not (staged_dirs[d] / DONE).is_file()]
    stage = ray.remote(num_cpus=1)(stage_dump)
    progress = Progress("stage  ", len(todo), "dumps")
    staged_now = 0

    def stage_all() -> None:
        nonlocal staged_now
        pending = [stage.remote(str(d), str(staged_dirs[d]), buckets, options.limit) for d in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            report = ray.get(ready[0])
            staged_now += report.get("rows", 0)
            progress.advance(1)

    if todo:
        timer.run("stage", stage_all)
        progress.close()
    stage_reports = [json.loads((staged_dirs[d] / DONE).read_text()) for d in dumps]
    warnings = [problem for report in stage_reports for problem in report["problems"]]
    for warning in warnings:
        _say(f"warning: {warning}")

    # 2. select the rows to rank, one task per bucket
    work_dir = out / WORK
    markers = {k: work_dir / f"b{k:04d}.json" for k in range(buckets)}
    todo_buckets = [k for k, marker in markers.items() if not marker.is_file()]
    select = ray.remote(num_cpus=1)(select_bucket)
    selected_now = 0

    def select_all() -> None:
        nonlocal selected_now
        pending = []
        for k in todo_buckets:
            files = [str(folder / f"b{k:04d}.parquet") for folder in staged_dirs.values() if (folder / f"b{k:04d}.parquet").is_file()]
            pending.append(select.remote(k, files, str(work_dir), options.mode, options.selection,
                                         options.rows_per_shard, options.group_size))
        bar = Progress("select ", len(pending), "buckets")
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            selected_now += ray.get(ready[0])["rows"]
            bar.advance(1)
        bar.close()

    if todo_buckets:
        timer.run("select", select_all)
    select_reports = [json.loads(marker.read_text()) for marker in markers.values()]
    expected = {shard: n for report in select_reports for shard, n in report["shards"].items()}

    # 3. rank the shards that have no output yet
    suffix = "." + options.output_format
    results = out / RESULTS
    pending_shards = sorted(s for s in expected if not (results / (s + suffix)).is_file())
    ranked_now, first_seconds, first_rows = timer.run(
        "rank", lambda: _rank(ray, pending_shards, expected, work_dir, results, bundle, options, workers)
    ) if pending_shards else (0, 0.0, 0)

    # the summary covers the whole output, across restarts; rates cover what this run did
    read = Counter()
    for report in stage_reports:
        read.update({k: v for k, v in report.items() if isinstance(v, int)})
    skipped = Counter()
    for report in select_reports:
        skipped.update(report["skipped"])
    stats = [json.loads((work_dir / f"{s}.done.json").read_text()) for s in sorted(expected)]
    seconds = {k: round(v, 2) for k, v in timer.seconds.items()}
    if pending_shards:
        seconds["rank_first_rows"] = round(first_seconds, 2)
    rate = {
        "stage_rows_per_s": _rate(staged_now, timer.seconds.get("stage")),
        "select_rows_per_s": _rate(selected_now, timer.seconds.get("select")),
        "rank_rows_per_s": _rate(ranked_now, timer.seconds.get("rank")),
        # after the first rows came back: without actor start-up and bundle loading
        "rank_rows_per_s_after_start": _rate(ranked_now - first_rows, timer.seconds.get("rank", 0.0) - first_seconds),
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
        "output_rows": sum(s["rows"] for s in stats),
        "errors": sum(s["errors"] for s in stats),
        "shards": len(expected),
        "this_run": {"dumps_staged": len(todo), "buckets_selected": len(todo_buckets), "shards_ranked": len(pending_shards),
                     "rows_ranked": ranked_now, "workers": workers, "threads": options.threads, "cores": cores},
        "warnings": warnings,
        "seconds": seconds,
        "rates": rate,
    }


def _rate(rows: int, seconds: float | None) -> float | None:
    return round(rows / seconds, 1) if seconds else None


def _rank(ray: Any, shards: list[str], expected: dict[str, int], work_dir: Path, results: Path, bundle: Path,
          options: BatchOptions, workers: int) -> tuple[int, float, int]:
    """Map the shards through `Ranker` actors; commit each shard's output file once all its rows are in.

    Returns the rows ranked, the seconds until the first rows came back (actor start-up, bundle
    loading, the first block) and how many those were, so the summary can give the rate after start-up."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts committed rows, on stderr
    context.print_on_execution_start = False
    # One item per shard, read by Ray tasks. Not `read_parquet`: Ray 2.60 resolves its paths in
    # threads that race on importing fsspec's HTTP filesystem when aiohttp is absent (torch installs fsspec).
    dataset = ray.data.from_items([{"path": str(work_dir / f"{s}.parquet")} for s in shards], override_num_blocks=len(shards))
    # a block per shard; reading takes no reserved core, which all go to the actors (else it would wait for one forever)
    dataset = dataset.map_batches(read_shards, batch_size=1, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2))
    dataset = dataset.map_batches(
        Ranker,
        fn_constructor_kwargs={"bundle": str(bundle), "mode": options.mode, "threads": options.threads, "sampling": options.sampling,
                               "threshold": options.threshold, "strict": options.strict, "seed": options.seed},
        batch_size=options.rows_per_batch,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),  # actors, each with one loaded bot (`concurrency=` before Ray 2.51)
        num_cpus=options.threads,  # cores reserved per actor = ONNX Runtime threads, so actors x threads <= cores
    )
    for leftover in results.glob(".*.tmp"):  # a commit cut short by a kill; the shard is ranked again
        leftover.unlink()
    schema = output_schema(options.mode)
    waiting: dict[str, list[pa.Table]] = {}
    arrived: Counter[str] = Counter()
    total = sum(expected[s] for s in shards)
    progress = Progress("rank   ", total, "rows")
    ranked, start, first = 0, time.perf_counter(), (0.0, 0)
    for block in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if block.num_rows == 0:
            continue
        if not first[1]:
            first = (time.perf_counter() - start, block.num_rows)
        for shard in set(block.column("shard").to_pylist()):
            part = block.filter(pc.equal(block.column("shard"), shard))
            waiting.setdefault(shard, []).append(part)
            arrived[shard] += part.num_rows
            progress.advance(part.num_rows)
            if arrived[shard] >= expected[shard]:
                ranked += _commit(shard, pa.concat_tables(waiting.pop(shard)).cast(schema), expected[shard], results, options)
    progress.close()
    if waiting:
        raise ReplyrankError(f"shards {sorted(waiting)} came back incomplete; run the same command again to finish them")
    return ranked, *first


def _commit(shard: str, table: pa.Table, expected: int, results: Path, options: BatchOptions) -> int:
    """Write one shard's output: its stats, then its rows under a temporary name renamed into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):  # a retried task may deliver a block twice: keep every id once
        first = {row_id: i for i, row_id in reversed(list(enumerate(ids)))}
        table = table.take(pa.array(sorted(first.values())))
    if table.num_rows != expected:
        raise ReplyrankError(f"shard {shard}: {table.num_rows} rows ranked, {expected} expected")
    table = table.sort_by("id")
    errors = table.num_rows - table.column("error").null_count
    # the counts first, beside the work shard (results/ holds only data files): a shard is done once its data file exists
    _write_json(results.parent / WORK / f"{shard}.done.json", {"rows": table.num_rows, "errors": errors})
    if options.output_format == "parquet":
        _write_atomically(results / f"{shard}.parquet", lambda p: pq.write_table(table, p, compression="zstd"))
    else:
        _write_atomically(results / f"{shard}.jsonl", lambda p: p.write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()), encoding="utf-8"))
    return table.num_rows


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp())


def _data_files(patterns: tuple[str, ...]) -> list[str]:
    import glob

    files = [f for pattern in patterns for f in (sorted(glob.glob(pattern)) or [pattern])]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise click.ClickException(f"no such data file: {missing[0]}")
    return files


_MISSING = missing_extra()
_HELP = f"""Rank every comment of Pushshift dumps on Ray Data, into Parquet files in OUT.

--mode reply writes a reply to each selected comment (the pick and every candidate's scores);
--mode score ranks the real replies of every parent (which one replyrank picks, each one's
realism and predicted upvotes). Starts a local Ray on --cpus cores, or joins the cluster at
--address. Run the same command again to resume a killed run. The summary goes to stdout as
JSON, progress to stderr.
""" + (f"\n(needs the batch extra: {BATCH_EXTRA}; {_MISSING} is missing)" if _MISSING else "")


@click.command(help=_HELP)
@click.option("--data", "data", multiple=True, required=True, help="Pushshift dump (RC_/RS_ .zst/.bz2/.jsonl); repeat, globs allowed.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumed when it holds this run).")
@click.option("--mode", type=click.Choice(MODES), default="reply", show_default=True)
@click.option("--bundle", type=click.Path(), default=None, help="Bundle folder (default: $REPLYRANK_BUNDLE, else the default bundle).")
@click.option("--address", default=None, help="Join the Ray cluster at this address (auto: the one this node belongs to) instead of starting one.")
@click.option("--cpus", type=int, default=None, help="Local mode: cores Ray may use (default: all).")
@click.option("--workers", type=int, default=None, help="Actors, each with one loaded bot (default: cores // threads).")
@click.option("--threads", type=int, default=1, show_default=True, help="ONNX Runtime threads per actor (= CPUs reserved per actor).")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="parquet", show_default=True)
@click.option("--min-score", type=int, default=None, help="Rank only rows with at least this Reddit score.")
@click.option("--subreddit", "subreddits", multiple=True, help="Rank only these subreddits (repeatable).")
@click.option("--since", type=click.DateTime(), default=None, help="Rank rows created at or after this UTC date/time.")
@click.option("--until", type=click.DateTime(), default=None, help="Rank rows created before this UTC date/time.")
@click.option("--min-chars", type=int, default=Filters.min_chars, show_default=True)
@click.option("--max-chars", type=int, default=Filters.max_chars, show_default=True)
@click.option("--limit", type=int, default=None, help="Read at most this many rows of each dump.")
@click.option("-n", "--candidates", type=int, default=None, help="Reply mode: candidates per comment (default: the bundle's).")
@click.option("--max-new-tokens", type=int, default=None, help="Reply mode (default: the bundle's).")
@click.option("--temperature", type=float, default=None, help="Reply mode (default: the bundle's).")
@click.option("--top-k", type=int, default=None, help="Reply mode (default: the bundle's).")
@click.option("--top-p", type=float, default=None, help="Reply mode (default: the bundle's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Each row's candidates come from a seed drawn from this and its id.")
@click.option("--threshold", type=float, default=None, help="Realism threshold (default: the bundle's).")
@click.option("--strict", is_flag=True, help="When no candidate reaches the threshold, keep none.")
@click.option("--buckets", type=int, default=None, help="Parquet files each dump is staged into, by thread (default: one per 16 MiB of dump).")
@click.option("--shard-rows", type=int, default=None, help="Output rows per committed shard (default: 256 reply, 4096 score).")
@click.option("--group-size", type=int, default=MAX_GROUP, show_default=True, help="Score mode: siblings ranked together, at most.")
@click.option("--batch-size", type=int, default=None, help="Rows per map_batches call (default: 8 reply, 16 groups score).")
def batch(data: tuple[str, ...], out: str, bundle: str | None, mode: str, subreddits: tuple[str, ...], since: datetime | None,
          until: datetime | None, min_score: int | None, min_chars: int, max_chars: int, candidates: int | None,
          max_new_tokens: int | None, temperature: float | None, top_k: int | None, top_p: float | None, **how: Any) -> None:
    if missing_extra():
        raise click.ClickException(f"`replyrank batch` needs the batch extra ({missing_extra()} is missing): {BATCH_EXTRA}")
    from .bundle import default_bundle_dir

    selection = Selection(Filters(min_chars=min_chars, max_chars=max_chars), min_score,
                          tuple(s.lower() for s in subreddits), _epoch(since), _epoch(until))
    given = {"candidates": candidates, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    options = BatchOptions(mode=mode, selection=selection, sampling={k: v for k, v in given.items() if v is not None}, **how)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Ray prints its workers' warnings to stdout: the summary goes there alone
            summary = run_batch(_data_files(data), out, bundle or default_bundle_dir(), options)
    except ReplyrankError as error:
        raise click.ClickException(str(error)) from None
    _say(
        f"done: {summary['output_rows']:,} rows in {summary['results']} ({summary['errors']} errors); "
        f"read {summary['rows_read']:,}, skipped {sum(summary['skipped'].values()):,} "
        f"({', '.join(f'{k} {v:,}' for k, v in summary['skipped'].items()) or 'none'}); "
        f"rank {summary['rates']['rank_rows_per_s'] or '-'} rows/s"
    )
    click.echo(json.dumps(summary))
