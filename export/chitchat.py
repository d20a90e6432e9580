"""Real two-person chats from the PyPI package `chitchat-dataset` as (message, reply, ratings) rows.

A row is one turn and the other person's next turn; each chat carries human ratings (witty,
upbeat, interesting, 1-10 each). Used by the default bundle and as real text for validation.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from replyrank.errors import ReplyrankError


@dataclass(frozen=True)
class ChatTurn:
    chat_id: str
    message: str
    reply: str
    engagement: float  # mean of the chat's witty, upbeat and interesting ratings, 1-10


def dataset_path() -> Path:
    spec = importlib.util.find_spec("chitchat_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise ReplyrankError("the chitchat data set is not installed: pip install --no-deps chitchat-dataset==0.9.0")
    return Path(spec.submodule_search_locations[0]) / "dataset.json"


def load_turns(max_chars: int = 300) -> list[ChatTurn]:
    """Every (turn, next turn by the other person) of every rated chat, in the file's order."""
    chats = json.loads(dataset_path().read_text(encoding="utf-8"))
    turns = []
    for chat_id, chat in chats.items():
        ratings = chat.get("ratings") or {}
        if not ratings:
            continue
        engagement = sum(ratings.values()) / len(ratings)
        messages = [" ".join(u["text"].strip() for u in message).strip() for message in chat["messages"]]
        for message, reply in zip(messages, messages[1:]):
            if message and reply and len(message) <= max_chars and len(reply) <= max_chars:
                turns.append(ChatTurn(chat_id, message, reply, engagement))
    return turns
