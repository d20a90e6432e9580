"""Filters a public reply bot needs: a blocklist, a length cap, and no copies of the comment or of training replies.

They act where `replyrank.bot` drops empty, duplicate and echoing candidates: before scoring, so
a filtered candidate costs no scorer time, and its `Candidate.reason` says which filter took it.

Copies are long shared word n-grams, the measure GPT-2's authors used for overlap with WebText
(8-grams, Radford et al., 2019): a candidate that shares `COPY_WORDS` (8) consecutive words with
the comment copies it. For copies of the generator's training replies the bundle may carry those
replies' n-grams, each hashed to 64 bits (blake2b) and stored sorted (`GeneratorSpec.training_ngrams`,
written by `replyrank.export.assemble.with_training_ngrams`): 8 bytes per n-gram, no text, looked up with a
binary search. A 64-bit hash makes a false match between distinct n-grams about as likely as
2^-64 per pair: negligible. Words are lower-cased runs of letters and digits (apostrophes inside a
word kept), so case, punctuation and spacing do not hide a copy.

`normalize_text` is the text normalisation a scorer may have been trained on (DialogRPT's: links,
quoted lines), applied to the pairs it scores (`replyrank.score`) and to its training pairs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

COPY_WORDS = 8  # consecutive words shared with the comment (or a training reply) that make a copy
REGEX_PREFIX = "re:"  # a blocklist entry starting with it is a regular expression; otherwise a word or phrase
_WORD = re.compile(r"\w+(?:['’]\w+)*")


def words(text: str) -> list[str]:
    """The words n-grams are made of: lower-cased runs of letters and digits."""
    return _WORD.findall(text.lower())


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """The 64-bit hash of every run of `n` consecutive words of `text`, in order (empty when it has fewer)."""
    tokens = words(text)
    grams = (" ".join(tokens[i : i + n]).encode("utf-8") for i in range(len(tokens) - n + 1))
    return np.array([int.from_bytes(hashlib.blake2b(g, digest_size=8).digest(), "little") for g in grams], dtype=np.uint64)


def training_ngram_set(replies: Iterable[str], n: int = COPY_WORDS) -> np.ndarray:
    """Sorted unique n-gram hashes of `replies`: what a bundle carries to recognise copies of them."""
    parts = [ngram_hashes(reply, n) for reply in replies]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _compile_entry(entry: object) -> re.Pattern[str]:
    """One blocklist entry as a case-insensitive pattern: a regular expression after `re:`, else a whole word or phrase."""
    if not isinstance(entry, str) or not entry.strip() or entry.strip() == REGEX_PREFIX:
        raise InputError(f"a blocklist entry must be a non-empty string, got {entry!r}")
    if entry.startswith(REGEX_PREFIX):
        try:
            return re.compile(entry[len(REGEX_PREFIX) :], re.IGNORECASE)
        except re.error as error:
            raise InputError(f"blocklist entry {entry!r} is not a valid regular expression ({error})") from None
    # a phrase matches with any whitespace between its words, and only as whole words ("ass" not in "class")
    phrase = r"\s+".join(re.escape(word) for word in entry.split())
    return re.compile(rf"(?<!\w){phrase}(?!\w)", re.IGNORECASE)


def read_blocklist(path: str | Path) -> tuple[str, ...]:
    """A blocklist file: one entry a line (`re:` starts a regular expression), blank lines and lines starting with # skipped.

    Every entry is checked here, so a bad one is an InputError naming the file and line, at load.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read the blocklist {path} ({error})") from None
    entries = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            _compile_entry(entry)
        except InputError as error:
            raise InputError(f"{path}:{number}: {error}") from None
        entries.append(entry)
    return tuple(entries)


@dataclass(frozen=True)
class ReplyFilters:
    """What drops a candidate before scoring, beside empty, duplicate and echoing the comment.

    blocklist:          words or phrases, matched case-insensitively as whole words with any whitespace
                        between them, and regular expressions written `re:PATTERN` (Python syntax,
                        searched case-insensitively; `(?-i:...)` for case); `read_blocklist` reads a file.
    max_reply_chars:    a longer candidate is dropped (None: no limit but the library's `MAX_REPLY_CHARS`).
    comment_copy_words: a candidate sharing this many consecutive words with the comment copies it (0: off).
    training_copies:    drop candidates that share an n-gram with the generator's training replies,
                        where the bundle carries them (`GeneratorSpec.training_ngrams`).
    Every entry is checked when the filters are made: a bad pattern is an InputError then, not at a call.
    """

    blocklist: tuple[str, ...] = ()
    max_reply_chars: int | None = None
    comment_copy_words: int = COPY_WORDS
    training_copies: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.blocklist, str):
            raise InputError("blocklist takes a sequence of entries, not one string; use (entry,) or read_blocklist(path)")
        object.__setattr__(self, "blocklist", tuple(self.blocklist))
        for entry in self.blocklist:
            _compile_entry(entry)
        limit = self.max_reply_chars
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InputError(f"max_reply_chars must be a whole number >= 1 (or None), got {self.max_reply_chars!r}")
        if isinstance(self.comment_copy_words, bool) or not isinstance(self.comment_copy_words, int) or self.comment_copy_words < 0:
            raise InputError(f"comment_copy_words must be a whole number >= 0 (0 turns it off), got {self.comment_copy_words!r}")


class ReplyScreen:
    """`ReplyFilters` compiled once, at load, with the bundle's training n-grams: `reason(text, comment)` per candidate.

    Holds nothing a call changes, so threads share it.
    """

    def __init__(self, filters: ReplyFilters, training_ngrams: np.ndarray | None = None, training_ngram_words: int = COPY_WORDS):
        self.filters = filters
        # the words and phrases as one alternation (one scan of the text), the regular expressions one by one
        phrases = [entry for entry in filters.blocklist if not entry.startswith(REGEX_PREFIX)]
        self.phrase_entries = {" ".join(entry.lower().split()): entry for entry in phrases}
        alternatives = "|".join(_compile_entry(entry).pattern for entry in sorted(phrases, key=len, reverse=True))
        self.phrases = re.compile(alternatives, re.IGNORECASE) if phrases else None
        self.patterns = [(entry, _compile_entry(entry)) for entry in filters.blocklist if entry.startswith(REGEX_PREFIX)]
        use_training = filters.training_copies and training_ngrams is not None and len(training_ngrams) > 0
        self.training_ngrams = training_ngrams if use_training else None
        self.training_ngram_words = training_ngram_words

    def reason(self, text: str, comment: str) -> str | None:
        """Why `text` is dropped as a reply to `comment`, or None when every filter lets it through."""
        if self.phrases is not None and (match := self.phrases.search(text)):
            return f'blocklist: "{self.phrase_entries.get(" ".join(match.group(0).lower().split()), match.group(0))}"'
        for entry, pattern in self.patterns:
            if pattern.search(text):
                return f'blocklist: "{entry}"'
        limit = self.filters.max_reply_chars
        if limit is not None and len(text) > limit:
            return f"longer than {limit} characters ({len(text)})"
        n = self.filters.comment_copy_words
        if n and (shared := _shared_run(text, comment, n)):
            return f'copies the comment ({n}+ words in a row: "{shared}")'
        if self.training_ngrams is not None:
            hashes = ngram_hashes(text, self.training_ngram_words)
            at = np.searchsorted(self.training_ngrams, hashes).clip(max=len(self.training_ngrams) - 1)
            hits = np.flatnonzero(self.training_ngrams[at] == hashes)
            if len(hits):
                first = words(text)[hits[0] : hits[0] + self.training_ngram_words]
                return f'copies a training reply ({self.training_ngram_words}+ words in a row: "{" ".join(first)}")'
        return None


def _shared_run(text: str, comment: str, n: int) -> str | None:
    """The first run of `n` consecutive words of `text` that also occurs in `comment`, or None."""
    comment_words = words(comment)
    grams = {tuple(comment_words[i : i + n]) for i in range(len(comment_words) - n + 1)}
    text_words = words(text)
    for i in range(len(text_words) - n + 1):
        if tuple(text_words[i : i + n]) in grams:
            return " ".join(text_words[i : i + n])
    return None


_MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\((?:https?://|www\.)[^)\s]*\)", re.IGNORECASE)
_URL = re.compile(r"\S*(?:https?://|www\.)\S*", re.IGNORECASE)


def normalize_text(text: str) -> str:
    """DialogRPT's text normalisation: links become "(URL)", quoted lines ("> ...") go, whitespace is one space.

    DialogRPT drops any text that quotes another (`>`); we drop the quoted lines and keep what the
    author wrote. Applied alike to training pairs and to the texts a bundle scores.
    """
    text = _MARKDOWN_LINK.sub(lambda m: f"{m.group(1)} (URL)".strip(), text)
    text = _URL.sub("(URL)", text)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith((">", "&gt;"))]
    return " ".join(" ".join(lines).split())
