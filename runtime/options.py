"""What a caller may ask of the generator: the sampling options, the limits on every request, and a deadline.

The ground floor of the runtime: this module imports nothing of replyrank but its errors, so the
bundle's specs (which record a deployment's `GenerationOptions`), the sampling, the generator, the
bot, the CLI and the server all read these from one place (faster-whisper's `TranscriptionOptions`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from .errors import InputError

# The most one call may ask for, so that no request can exhaust the machine. `Bot`, the CLI and
# `replyrank serve` all refuse more (the server's flags may only lower them). The sizes come from
# the KV cache: for a SmolLM2-135M generator (30 layers, 3 KV heads of 64, fp32) a token's cache
# costs 46 KB, so 256 comment tokens and 32 candidates x 256 new tokens hold about 0.4 GB
# (twice that where each candidate holds its own copy of the prompt's: graphs without an
# attention bias), and decoding them takes tens of seconds on two cores.
MAX_CANDIDATES = 32  # candidate replies one call writes (they decode together)
MAX_NEW_TOKENS = 256  # tokens one candidate may add
MAX_STOP_STRINGS = 8  # each is searched for after every token of every candidate
MAX_COMMENT_CHARS = 40_000  # Reddit's longest post body; `Bot.reply` cuts a longer comment, the server refuses it
MAX_REPLIES = 64  # replies one `Bot.score` call ranks
MAX_REPLY_CHARS = 10_000  # Reddit's longest comment; a scorer reads at most its max_length tokens of it


@dataclass(frozen=True)
class GenerationOptions:
    """How candidates are sampled. `temperature=0` means greedy decoding."""

    candidates: int = 8
    max_new_tokens: int = 64  # room for a Reddit-length answer, so the cap rarely cuts one short (docs/quality.md, "Reply length")
    min_new_tokens: int = 1
    temperature: float = 0.7
    top_k: int = 40  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    repetition_penalty: float = 1.0  # 1.0 disables; CTRL's rule, as transformers applies it
    stop: tuple[str, ...] = ()
    max_comment_tokens: int = 256
    seed: int | None = None  # any integer >= 0; None draws fresh entropy

    def check(self) -> None:
        """Raise `InputError` for a value out of its range or over a limit above."""
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise InputError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {self.candidates}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InputError(f"min_new_tokens must be between 0 and max_new_tokens, got {self.min_new_tokens}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_comment_tokens < 1:
            raise InputError(f"max_comment_tokens must be at least 1, got {self.max_comment_tokens}")
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise InputError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")


def check_replies(replies: list[str]) -> None:
    """Refuse more replies to score than `MAX_REPLIES`, or one longer than `MAX_REPLY_CHARS`."""
    if len(replies) > MAX_REPLIES:
        raise InputError(f"at most {MAX_REPLIES} replies can be ranked at once, got {len(replies)}")
    for reply in replies:
        if isinstance(reply, str) and len(reply) > MAX_REPLY_CHARS:
            raise InputError(f"a reply may be at most {MAX_REPLY_CHARS} characters, got one of {len(reply)}")


# A caller's deadline for the decodes it starts (the server's per-request timeout). It is a
# context variable rather than an option: it belongs to one call, never to a bundle's sampling.
_deadline: ContextVar[float | None] = ContextVar("replyrank_deadline", default=None)


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Inside this block, a decode stops with `DeadlineExceeded` once `time.monotonic()` passes `at`.

    Checked between decode steps, so the thread is free again about one step after the deadline:
    `with deadline(time.monotonic() + 5): bot.reply(comment)`. None sets no deadline.
    """
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def past_deadline() -> bool:
    """True once the deadline that the caller's `deadline` block set has passed (never without one)."""
    at = _deadline.get()
    return at is not None and time.monotonic() > at
