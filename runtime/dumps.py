"""Pushshift dumps in, clean (parent, reply) pairs out.

Reddit data is distributed as Pushshift dumps: one JSON object per line, comments
in `RC_*` files and submissions in `RS_*` files, usually zstandard-compressed
with a 2 GiB window. This module streams those files, joins every comment to
the text it replies to (a comment's body, or a submission's title and
selftext), filters out deleted, bot and out-of-range texts, and splits the
pairs by thread, because siblings share a parent and a split by row leaks.

`sibling_pairs` builds the comparison set of DialogRPT (Gao et al., 2020,
"Dialogue Response Ranking Training with Large-Scale Human Feedback Data"):
replies to one parent, adjacent and close in time, whose scores differ;
its text normalisation (links, quoted lines) is `replyrank.filters.normalize_text`.
"""

from __future__ import annotations

import bz2
import hashlib
import html
import json
import logging
import lzma
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from .errors import ReplyrankError

log = logging.getLogger(__name__)

# Every real Pushshift dump was written with a 2 GiB window; zstandard's default
# limit refuses them ("Frame requires too much memory for decoding").
ZSTD_MAX_WINDOW = 2**31
_READ_CHUNK = 2**18
_PLAIN_SUFFIXES = (".jsonl", ".json", ".ndjson")
# Reddit's placeholders for text its author or a moderator took down.
_DELETED = frozenset({"[deleted]", "[removed]", "[deleted by user]"})


class DataError(ReplyrankError, ValueError):
    """A dump that cannot be read, or files that yield no usable pairs."""


@dataclass(frozen=True)
class Pair:
    """One reply and the text it answers; `score` is the reply's Reddit score."""

    parent: str
    reply: str
    score: int
    thread_id: str  # link_id without its t3_ prefix
    subreddit: str
    created_utc: int  # of the reply, seconds since the epoch
    reply_id: str  # bare comment id, e.g. "c13"
    parent_id: str  # full name: t1_<comment id> or t3_<submission id>


@dataclass(frozen=True)
class Filters:
    """Which rows count as usable text; a row that fails is neither parent nor reply."""

    min_chars: int = 1  # after unescaping and stripping, for parent and reply alike
    max_chars: int = 1000
    drop_deleted: bool = True  # [deleted]/[removed] or empty bodies
    bot_authors: tuple[str, ...] = ("AutoModerator",)
    drop_bot_suffix: bool = True  # author names ending in "bot", any case

    def drop_reason(self, text: str, author: str) -> str | None:
        """Why a row with this (cleaned) text and author is not usable, or None: the reasons `load_pairs` counts."""
        if self.drop_deleted and (not text or text in _DELETED):
            return "deleted"
        if author in self.bot_authors or (self.drop_bot_suffix and author.lower().endswith("bot")):
            return "bot"
        if len(text) < self.min_chars:
            return "min_chars"
        if len(text) > self.max_chars:
            return "max_chars"
        return None


def read_dump(path: str | Path, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Stream the JSON objects of a dump, raising `DataError` at the first bad line; see `iter_rows`."""
    return iter_rows(path, limit)


def iter_rows(
    path: str | Path, limit: int | None = None, on_bad_line: Callable[[DataError], None] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the JSON objects of a `.zst`, `.bz2`, `.xz` or plain `.jsonl`/`.json`/`.ndjson` dump.

    Reads one line at a time and never holds the whole file. Blank lines are
    skipped; `limit` stops after that many objects. A line that is not a JSON
    object raises `DataError` naming the file and the line, or, given
    `on_bad_line`, is handed to it as that error and skipped: one bad line in a
    month of Reddit should cost that line, not the month. A file that is not a
    dump and a compressed stream cut short always raise `DataError` (nothing
    after them can be read); the rows before them have been yielded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    line_no = 0
    count = 0
    with path.open("rb") as raw:
        lines = _binary_lines(raw, path)
        while limit is None or count < limit:
            try:
                line = next(lines, None)
            except zstandard.ZstdError as exc:
                raise DataError(_stream_error(path, "zstd", line_no, exc)) from None
            except (OSError, EOFError, lzma.LZMAError) as exc:  # bz2/xz: not such data, or cut short
                raise DataError(_stream_error(path, path.suffix.lstrip(".").lower(), line_no, exc)) from None
            if line is None:
                return
            line_no += 1
            if not line.strip():
                continue
            row = _parse_line(line, path, line_no)
            if isinstance(row, DataError):
                if on_bad_line is None:
                    raise row
                on_bad_line(row)
                continue
            count += 1
            yield row


def _parse_line(line: bytes, path: Path, line_no: int) -> dict[str, Any] | DataError:
    """The line's JSON object, or the error that says why it is not one."""
    try:
        row = json.loads(line)
    except UnicodeDecodeError:
        return DataError(f"{path}: line {line_no} is not UTF-8 text; is this a Pushshift dump?")
    except json.JSONDecodeError as exc:
        return DataError(f"{path}: line {line_no} is not JSON ({exc.msg}); is this a Pushshift dump?")
    if not isinstance(row, dict):
        return DataError(f"{path}: line {line_no} is JSON but not an object (got {type(row).__name__})")
    return row


def _binary_lines(raw: BinaryIO, path: Path) -> Iterator[bytes]:
    """The file's lines as bytes, decompressed by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".zst":
        return _split_lines(_zstd_chunks(raw))
    if suffix == ".bz2":
        return iter(bz2.BZ2File(raw))
    if suffix == ".xz":  # older Pushshift months were published as .xz
        return iter(lzma.LZMAFile(raw))
    if suffix in _PLAIN_SUFFIXES:
        return iter(raw)
    raise DataError(f"{path}: unknown dump format; expected .zst, .bz2, .xz, .jsonl, .json or .ndjson")


def _zstd_chunks(raw: BinaryIO) -> Iterator[bytes]:
    """Decompressed bytes of every zstd frame in `raw`.

    zstandard's `stream_reader` ends silently at the end of a truncated file,
    so this drives `decompressobj` and checks that the last frame reached its end.
    """
    dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
    frame = dctx.decompressobj()
    frame_fed = False
    while chunk := raw.read(_READ_CHUNK):
        while chunk:
            yield frame.decompress(chunk)
            frame_fed = True
            chunk = b""
            if frame.eof:  # bytes past a frame's end belong to the next frame
                chunk = frame.unused_data
                frame = dctx.decompressobj()
                frame_fed = False
    if frame_fed and not frame.eof:
        raise zstandard.ZstdError("stream ends inside a frame")


def _split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Cut a stream of byte chunks into lines, keeping only one partial line in memory."""
    pending = b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        yield from lines
    if pending:
        yield pending


def _stream_error(path: Path, codec: str, line_no: int, exc: BaseException) -> str:
    if line_no == 0:
        return f"{path}: not a {codec} dump ({exc})"
    return f"{path}: {codec} stream truncated or corrupted after line {line_no} ({exc})"


def load_pairs(
    paths: Sequence[str | Path], filters: Filters = Filters(), limit: int | None = None
) -> list[Pair]:
    """(parent, reply) pairs from RC_ and RS_ dumps; see `load_pairs_with_stats`."""
    pairs, stats = load_pairs_with_stats(paths, filters, limit)
    log.info("loaded %d pairs from %d files: %s", len(pairs), len(paths), stats)
    return pairs


def load_pairs_with_stats(
    paths: Sequence[str | Path], filters: Filters = Filters(), limit: int | None = None
) -> tuple[list[Pair], dict[str, int]]:
    """(parent, reply) pairs from RC_ and RS_ dumps, and counts of rows read and dropped.

    Files may come in any order: a row with a `title` is a submission, a row with
    a `body` or `parent_id` a comment, anything else goes by its file's RS_/RC_
    prefix. `limit` caps the rows read from each file. Texts are HTML-unescaped
    (Reddit stores `&amp;`, `&gt;`) and stripped before `filters` apply.

    Memory: one pass that keeps the text of every row passing `filters` (each at
    most `filters.max_chars` characters; a comment's body is shared by its
    roles as parent and reply), one `Pair` per kept comment, and the bare id of
    every dropped row: O(kept rows x max_chars), never the raw rows or files.

    Stats keys: `rows`, `comments`, `submissions`, `pairs`, and `dropped_<reason>`
    per row (bad_row, duplicate, deleted, bot, min_chars, max_chars) or per
    reply (no_parent: parent not in the files; parent_filtered). Raises
    `DataError` naming the files and the biggest reason when no pair is left.
    """
    texts: dict[str, str] = {}  # full name (t1_/t3_ + id) -> kept text
    dropped: set[str] = set()  # full names of rows the filters removed
    replies: list[Pair] = []  # kept comments, parent text filled in at the end
    counts: Counter[str] = Counter()
    for path in paths:
        file_kind = Path(path).name[:3].upper()
        for row in read_dump(path, limit):
            counts["rows"] += 1
            if is_submission(row, file_kind):
                counts["submissions"] += 1
                _add_submission(row, filters, texts, dropped, counts)
            else:
                counts["comments"] += 1
                _add_comment(row, filters, texts, dropped, replies, counts)

    pairs: list[Pair] = []
    for reply in replies:
        parent = texts.get(reply.parent_id)
        if parent is None:
            reason = "parent_filtered" if reply.parent_id in dropped else "no_parent"
            counts["dropped_" + reason] += 1
            continue
        pairs.append(replace(reply, parent=parent))
    counts["pairs"] = len(pairs)
    stats = dict(counts)
    if not pairs:
        raise DataError(_empty_message(paths, stats))
    return pairs, stats


def is_submission(row: dict[str, Any], file_kind: str) -> bool:
    """Whether a dump row is a submission: it has a title; a comment has a body or a parent; else its file's
    prefix (`RS_` or `RC_`, upper case) decides."""
    if "title" in row:
        return True
    if "body" in row or "parent_id" in row:
        return False
    return file_kind == "RS_"


def _add_submission(
    row: dict[str, Any], filters: Filters, texts: dict[str, str], dropped: set[str], counts: Counter[str]
) -> None:
    if row.get("id") is None or not isinstance(row.get("title"), str):
        counts["dropped_bad_row"] += 1
        return
    name = "t3_" + str(row["id"])
    text = submission_text(row["title"], row.get("selftext") or "")
    _keep_text(name, text, str(row.get("author") or ""), filters, texts, dropped, counts)


def _add_comment(
    row: dict[str, Any], filters: Filters, texts: dict[str, str], dropped: set[str],
    replies: list[Pair], counts: Counter[str],
) -> None:
    try:
        comment_id = str(row["id"])
        parent_id = str(row["parent_id"])
        thread_id = str(row["link_id"]).removeprefix("t3_")
        body = row["body"]
        created_utc = int(float(row["created_utc"]))  # some dumps store it as a string
        score = row.get("score")
        score = int(row["ups"] if score is None else score)  # old dumps may only have ups
    except (KeyError, TypeError, ValueError):
        counts["dropped_bad_row"] += 1
        return
    if not isinstance(body, str) or parent_id[:3] not in ("t1_", "t3_"):
        counts["dropped_bad_row"] += 1
        return
    name = "t1_" + comment_id
    text = clean_text(body)
    if not _keep_text(name, text, str(row.get("author") or ""), filters, texts, dropped, counts):
        return
    replies.append(Pair(
        parent="", reply=texts[name], score=score, thread_id=thread_id, subreddit=str(row.get("subreddit") or ""),
        created_utc=created_utc, reply_id=comment_id, parent_id=parent_id,
    ))


def clean_text(text: str) -> str:
    """A dump's text as the models see it: Reddit stores it HTML-escaped (`&amp;`, `&gt;`)."""
    return html.unescape(text).strip()


def submission_text(title: str, selftext: str) -> str:
    """What a submission's repliers answered: its title and selftext, cleaned. A removed selftext
    leaves the title, which is still what they answered."""
    title, selftext = clean_text(title), clean_text(selftext)
    return title if selftext in _DELETED or not selftext else f"{title}\n\n{selftext}"


def _keep_text(
    name: str, text: str, author: str, filters: Filters, texts: dict[str, str], dropped: set[str], counts: Counter[str]
) -> bool:
    """Store `text` under `name` if it passes `filters`; count the reason if not."""
    if name in texts or name in dropped:
        counts["dropped_duplicate"] += 1  # the same row in two files, or twice in one
        return False
    reason = filters.drop_reason(text, author)
    if reason is not None:
        counts["dropped_" + reason] += 1
        dropped.add(name)
        return False
    texts[name] = text
    return True


_REASON_HINTS = {
    "bad_row": "rows missing id/parent_id/body/link_id/created_utc/score",
    "duplicate": "rows seen twice",
    "deleted": "Filters.drop_deleted",
    "bot": "Filters.bot_authors/drop_bot_suffix",
    "min_chars": "Filters.min_chars",
    "max_chars": "Filters.max_chars",
    "no_parent": "parents not in the files; add the RS_/RC_ file that holds them",
    "parent_filtered": "parents removed by the filters",
}


def _empty_message(paths: Sequence[str | Path], stats: dict[str, int]) -> str:
    names = ", ".join(Path(p).name for p in paths) or "no files"
    drops = {key.removeprefix("dropped_"): n for key, n in stats.items() if key.startswith("dropped_")}
    if not drops:
        return f"no (parent, reply) pairs in {names}: {stats.get('rows', 0)} rows read, none a reply"
    reason, n = max(drops.items(), key=lambda item: item[1])
    return (
        f"no (parent, reply) pairs in {names}: most were dropped by {reason} "
        f"({_REASON_HINTS[reason]}): {n} of {stats.get('rows', 0)} rows"
    )


def split_by_thread(
    pairs: Iterable[Pair], valid: float = 0.1, test: float = 0.1, seed: int = 0
) -> dict[str, list[Pair]]:
    """Train/valid/test sets that never share a thread.

    Each thread goes where a SHA-256 of (seed, thread_id) lands in [0, 1), so the
    split is the same on every run and machine (Python's `hash()` is salted per
    process) and a thread keeps its set when more data is added.
    """
    if valid < 0 or test < 0 or valid + test > 1:
        raise ValueError(f"valid ({valid}) and test ({test}) must be >= 0 and sum to at most 1")
    splits: dict[str, list[Pair]] = {"train": [], "valid": [], "test": []}
    for pair in pairs:
        digest = hashlib.sha256(f"{seed}:{pair.thread_id}".encode()).digest()
        position = int.from_bytes(digest[:8], "big") / 2**64
        name = "test" if position < test else "valid" if position < test + valid else "train"
        splits[name].append(pair)
    return splits


@dataclass(frozen=True)
class SiblingPair:
    """Two replies to one parent, the better-scored first: one comparison of DialogRPT's updown task.

    gap: score difference (> 0); hours: time between the two posts; rank_gap: difference of the
    two replies' normalised ranks among all their siblings' distinct scores (0 worst, 1 best).
    """

    better: Pair
    worse: Pair
    gap: int
    hours: float
    rank_gap: float


def sibling_pairs(
    pairs: Iterable[Pair],
    within_seconds: int | None = 3600,
    min_gap: int = 1,
    min_rank_gap: float = 0.0,
    adjacent: bool = True,
    max_per_parent: int | None = None,
    seed: int = 0,
) -> list[SiblingPair]:
    """Comparable replies to one parent, as DialogRPT builds them (Gao et al., 2020, `src/data.py`).

    Siblings are sorted by posting time; with `adjacent` only neighbours in that order are
    compared (DialogRPT's rule: each reply meets the one posted just before it), else every two.
    A pair counts when the two were posted within `within_seconds` (None: any time), because an
    early reply collects votes a later one never sees; when their scores differ by at least
    max(1, min_gap); and when their normalised ranks differ by at least `min_rank_gap`.
    `max_per_parent` keeps that many pairs of a parent, drawn with `seed`, so a huge thread
    cannot outweigh the rest. Deterministic for a given input.
    """
    gap = max(1, min_gap)
    by_parent: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_parent.setdefault(pair.parent_id, []).append(pair)
    result: list[SiblingPair] = []
    for parent_id, siblings in by_parent.items():
        siblings.sort(key=lambda p: (p.created_utc, p.reply_id))
        scores = sorted({p.score for p in siblings})
        if len(scores) < 2:
            continue
        rank = {score: i / (len(scores) - 1) for i, score in enumerate(scores)}
        found: list[SiblingPair] = []
        for i, first in enumerate(siblings):
            for second in siblings[i + 1 : i + 2] if adjacent else siblings[i + 1 :]:
                seconds = second.created_utc - first.created_utc
                if within_seconds is not None and seconds > within_seconds:
                    break  # sorted by time: every later sibling is further away
                better, worse = (first, second) if first.score > second.score else (second, first)
                rank_gap = rank[better.score] - rank[worse.score]
                if better.score - worse.score >= gap and rank_gap >= min_rank_gap:
                    found.append(SiblingPair(better, worse, better.score - worse.score, seconds / 3600, rank_gap))
        if max_per_parent is not None and len(found) > max_per_parent:
            digest = hashlib.sha256(f"{seed}:{parent_id}".encode()).digest()
            found = random.Random(digest).sample(found, max_per_parent)
        result += found
    return result
