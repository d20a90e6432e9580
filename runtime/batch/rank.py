"""Step 3 of a batch run, on each worker: the map_batches callable that ranks work rows with one loaded bot.

Ray Data's pattern for batch inference: a callable class whose `__init__` loads the model once per
actor and whose `__call__` maps a batch (here a pyarrow table of work rows) to a batch of output rows.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa


def candidate_columns() -> dict[str, Any]:
    """`Candidate`'s fields as the output stores them."""
    import pyarrow as pa

    return {"text": pa.string(), "realism": pa.float64(), "upvotes": pa.float64(), "upvote_chance": pa.float64(),
            "pick_score": pa.float64(), "kept": pa.bool_(), "reason": pa.string(), "finish_reason": pa.string(),
            "relevance": pa.float64()}


def output_schema(mode: str) -> pa.Schema:
    """The columns of the output files. `id` is the input row's Reddit full name (t1_/t3_)."""
    import pyarrow as pa

    common = [("id", pa.string()), ("shard", pa.string()), ("subreddit", pa.string()), ("thread_id", pa.string()),
              ("created_utc", pa.int64()), ("score", pa.int64())]
    if mode == "reply":
        candidate = pa.struct(list(candidate_columns().items()))
        return pa.schema([
            *common,
            ("reply", pa.string()),  # the pick's text; null when none was kept (strict) or on error
            ("realism", pa.float64()),  # the pick's discriminator probability, 0-1
            ("upvotes", pa.float64()),  # the pick's predicted upvotes, on the bundle's scale
            ("relevance", pa.float64()),  # the pick's relevance probability, 0-1; null without a relevance scorer
            ("pick_score", pa.float64()),  # what selection ranked it by (realism x relevance x upvote chance)
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
        ("relevance", pa.float64()),  # null when the bundle has no relevance scorer
        ("upvotes", pa.float64()),
        ("upvote_chance", pa.float64()),  # calibrated chance of a score above the group's median reply
        ("pick_score", pa.float64()),  # realism x relevance x upvote chance: what selection ranks kept replies by
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


def _error(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"


class Ranker:
    """The map_batches callable: one loaded `Bot` per actor, batches of work rows in, output rows out."""

    def __init__(self, bundle: str, mode: str, threads: int, sampling: dict[str, Any], threshold: float | None,
                 strict: bool, seed: int):
        from ..bot import Bot

        # score mode needs the scorers alone: the generator would cost every actor its load time and memory
        self.bot = Bot(bundle, threads=threads, realism_threshold=threshold, strict=strict, generator=mode == "reply")
        self.mode, self.seed = mode, seed
        # a stop list arrives as a JSON list; GenerationOptions holds a tuple
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
            return [{**base, "error": _error(error)}]
        best = result.best
        columns = candidate_columns()
        return [{
            **base, "reply": best.text if best else None, "realism": best.realism if best else None,
            "relevance": best.relevance if best else None,
            "upvotes": best.upvotes if best else None, "pick_score": best.pick_score if best else None,
            "note": result.note, "reason": result.reason, "truncated": result.truncated,
            "candidates": [{name: getattr(c, name) for name in columns} for c in result.candidates],
            "ms": result.timings_ms.get("total"), "error": None,
        }]

    def _score(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        ids, texts, scores = row["reply_ids"], row["reply_texts"], row["reply_scores"]
        bases = [{"id": reply_id, "shard": row["shard"], "subreddit": row["subreddit"], "thread_id": row["thread_id"],
                  "created_utc": created, "score": score, "parent_id": row["parent_id"], "group": row["group"],
                  "siblings": len(ids), "score_rank": 1 + sum(other > score for other in scores)}
                 for reply_id, created, score in zip(ids, row["reply_created"], scores)]
        try:
            ranked = self.bot.score(row["parent_text"], list(texts)).candidates
        except Exception as error:
            return [{**base, "error": _error(error)} for base in bases]
        # candidates come back best first, by text; give each its reply back. Of equal texts the
        # first one posted is the one scored (the others are duplicates) and it sorts first too.
        if sorted(c.text for c in ranked) != sorted(texts):
            message = "ReplyrankError: Bot.score returned candidates that are not the replies given"
            return [{**base, "error": message} for base in bases]
        unused: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            unused.setdefault(text, []).append(i)
        out = []
        for rank, candidate in enumerate(ranked, 1):
            i = unused[candidate.text].pop(0)
            out.append({**bases[i], "realism": candidate.realism, "relevance": candidate.relevance, "upvotes": candidate.upvotes,
                        "upvote_chance": candidate.upvote_chance, "pick_score": candidate.pick_score,
                        "kept": candidate.kept, "reason": candidate.reason, "rank": rank,
                        "picked": rank == 1 and candidate.kept, "error": None})
        return out
