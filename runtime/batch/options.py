"""What a batch run ranks (`Selection`) and everything it is started with (`BatchOptions`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ..dumps import Filters
from ..errors import InputError
from ..options import GenerationOptions

MODES = ("reply", "score")
FORMATS = ("parquet", "jsonl")
MAX_GROUP = 64  # replies Bot.score ranks in one call (one batch through the scorers)
PACKAGES = ("ray", "pyarrow")  # the batch extra
INSTALL = "pip install 'replyrank[batch]'"


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
        reason = self.text.drop_reason(text, author)
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
    buckets: int | None = None  # None: one per 16 MiB of dump (`layout.auto_buckets`)
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
