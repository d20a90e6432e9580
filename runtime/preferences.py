"""Preference pairs, your own: a JSONL file in the preference format of TRL and the preference datasets, read,
split and scored.

One JSON object a line (https://huggingface.co/docs/trl/dataset_formats, "preference"):

    {"prompt": "the comment", "chosen": "the reply people preferred", "rejected": "the other reply"}

or the conversational form, where each is a list of {"role", "content"} messages: the comment is the
prompt's last message, each reply the last message of `chosen` and `rejected` (the scorers read one
comment and one reply, so earlier turns are not read); with the prompt implicit, it is the messages
`chosen` and `rejected` share before their last. Other fields are ignored. A line that is not such a
pair is an `InputError` naming the file and the line, never a traceback half-way through a run.

`split_preferences` holds out a share of the prompts (all their pairs together), the same on every
machine, so `replyrank train upvotes --pairs FILE` trains on one part and `replyrank eval --pairs FILE
--split test` measures on the other. `evaluate_preferences` is that measure: the share of pairs each of
the bundle's scores orders as the file does, with a bootstrap 95% interval, beside reply length.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .metrics import mean_interval, pairwise_outcomes

FIELDS = ("prompt", "chosen", "rejected")
COMPLETION_FIELDS = ("prompt", "completion")  # TRL's prompt-completion format: one reply to one comment a line
TEST_SHARE = 0.1  # of the prompts, held out by `split_preferences`
LENGTH = "length"  # the baseline beside the scores: the longer reply preferred


@dataclass(frozen=True)
class PreferencePair:
    """A comment and two replies to it, the preferred one first; `line` is where it stands in its file (1-based)."""

    prompt: str
    chosen: str
    rejected: str
    line: int


def read_preferences(path: str | Path) -> list[PreferencePair]:
    """Every pair of a JSONL preference file, in order; blank lines are skipped, a bad line is an InputError naming it."""
    pairs = [_pair(row, number, where) for number, row, where in _objects(path, FIELDS)]
    if not pairs:
        raise InputError(f"{path} holds no preference pairs (one JSON object a line: {', '.join(FIELDS)})")
    return pairs


def read_completions(path: str | Path) -> list[tuple[str, str]]:
    """(comment, reply) per line of a JSONL file in TRL's prompt-completion format (`prompt`, `completion`: strings, or
    conversations whose last message is taken); what `train realism --real/--generated` reads."""
    rows = []
    for number, row, where in _objects(path, COMPLETION_FIELDS):
        missing = [name for name in COMPLETION_FIELDS if name not in row]
        if missing:
            raise InputError(f"{where}: no {' or '.join(repr(m) for m in missing)} (a line has {', '.join(COMPLETION_FIELDS)})")
        rows.append((_last(row["prompt"], f"{where}: 'prompt'"), _last(row["completion"], f"{where}: 'completion'")))
    if not rows:
        raise InputError(f"{path} holds no replies (one JSON object a line: {', '.join(COMPLETION_FIELDS)})")
    return rows


def _objects(path: str | Path, fields: Sequence[str]) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(line number, object, "FILE, line N") of every non-blank line of a JSONL file, each checked to be a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InputError(f"{where}: not UTF-8 text") from None
            except json.JSONDecodeError as error:
                raise InputError(f"{where}: not a JSON object ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{where}: a JSON {type(row).__name__}, not an object with {', '.join(fields)}")
            yield number, row, where


def _pair(row: dict[str, Any], number: int, where: str) -> PreferencePair:
    missing = [name for name in ("chosen", "rejected") if name not in row]
    if missing:
        raise InputError(f"{where}: no {' or '.join(repr(m) for m in missing)} (a preference pair has {', '.join(FIELDS)})")
    chosen, rejected = _last(row["chosen"], f"{where}: 'chosen'"), _last(row["rejected"], f"{where}: 'rejected'")
    if "prompt" in row:
        prompt = _last(row["prompt"], f"{where}: 'prompt'")
    else:
        prompt = _implicit_prompt(row["chosen"], row["rejected"], where)
    if chosen == rejected:
        raise InputError(f"{where}: 'chosen' and 'rejected' are the same text, so the line prefers neither")
    return PreferencePair(prompt, chosen, rejected, number)


def _last(value: Any, what: str) -> str:
    """A field's text: the string itself, or the content of a conversation's last message."""
    if isinstance(value, list):
        if not value:
            raise InputError(f"{what} is an empty list of messages")
        value = _content(value[-1], what)
    if not isinstance(value, str):
        raise InputError(f"{what} is a {type(value).__name__}, not a string or a list of messages")
    if not value.strip():
        raise InputError(f"{what} is empty")
    return value


def _content(message: Any, what: str) -> Any:
    if not isinstance(message, dict) or "content" not in message:
        raise InputError(f"{what}'s last message is not a {{'role', 'content'}} object")
    return message["content"]


def _implicit_prompt(chosen: Any, rejected: Any, where: str) -> str:
    """TRL's implicit prompt: the messages both conversations share before their last; plain texts give none."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)) or len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
        raise InputError(f"{where}: no 'prompt' (the comment the replies answer), and 'chosen' and 'rejected' are not "
                         "conversations that share it before their last message")
    return _last(chosen[:-1], f"{where}: the shared messages")


def split_preferences(pairs: Sequence[PreferencePair], test: float = TEST_SHARE, seed: int = 0) -> dict[str, list[PreferencePair]]:
    """Train and test pairs that never share a prompt: each prompt goes where a SHA-256 of (seed, prompt) lands in
    [0, 1), so the split is the same on every run and a prompt keeps its side when more pairs are added."""
    if not 0 <= test <= 1:
        raise ValueError(f"test share must be in [0, 1], got {test}")
    splits: dict[str, list[PreferencePair]] = {"train": [], "test": []}
    for pair in pairs:
        splits["test" if held_out(pair.prompt, test, seed) else "train"].append(pair)
    return splits


def held_out(prompt: str, test: float = TEST_SHARE, seed: int = 0) -> bool:
    """Whether `prompt` falls in the held-out share: where a SHA-256 of (seed, prompt) lands in [0, 1)."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test


def evaluate_preferences(
    score: Callable[[list[tuple[str, str]]], dict[str, np.ndarray]], pairs: Sequence[PreferencePair], resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairwise accuracy of each score on `pairs`: the share where it scores `chosen` above `rejected` (a tie counts
    half), with its bootstrap 95% interval, beside length's, and each score's margin over length on the same pairs.

    `score(texts)` gives each score's values of (comment, reply) texts, by score name (`Bot.score_pairs`).
    """
    if not pairs:
        raise InputError("no preference pairs to evaluate")
    texts = [(p.prompt, reply) for p in pairs for reply in (p.chosen, p.rejected)]
    values = {**score(texts), LENGTH: np.array([len(reply) for _, reply in texts], dtype=float)}
    outcomes = {name: pairwise_outcomes(v[0::2], v[1::2]) for name, v in values.items()}
    report: dict[str, Any] = {"pairs": len(pairs), "pairwise": {}, "intervals": {}, "margins": {}}
    for name, outcome in outcomes.items():
        report["pairwise"][name] = float(outcome.mean())
        report["intervals"][name] = list(mean_interval(outcome, resamples, seed=seed))
        if name != LENGTH:  # paired: one resample of pairs for both, so the margin's interval is its own
            margin = outcome - outcomes[LENGTH]
            report["margins"][f"{name}-{LENGTH}"] = {"value": float(margin.mean()), "interval": list(mean_interval(margin, resamples, seed=seed))}
    return report


def format_report(report: dict[str, Any]) -> str:
    """`eval --pairs FILE`'s table: each score's pairwise accuracy and interval, and its margin over length."""
    lines = [f"pairwise accuracy on {report['pairs']} preference pairs of {report.get('data', 'the file')} ({report.get('split', 'all')})",
             f"{'score':10} {'accuracy [95% CI]':24} {'minus length [95% CI]':24}"]
    for name, accuracy in report["pairwise"].items():
        low, high = report["intervals"][name]
        margin = report["margins"].get(f"{name}-{LENGTH}")
        versus = f"{margin['value']:+.3f} [{margin['interval'][0]:+.3f}, {margin['interval'][1]:+.3f}]" if margin else ""
        lines.append(f"{name:10} {accuracy:.3f} [{low:.3f}, {high:.3f}]     {versus}")
    return "\n".join(lines)
