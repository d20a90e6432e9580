"""DialogRPT's comparison pairs and text normalisation, on hand-made threads and a real slice."""

from __future__ import annotations

from pathlib import Path

import pytest

from replyrank.dumps import Pair, load_pairs, sibling_pairs, split_by_thread
from replyrank.filters import normalize_text

REDDIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit"
HOUR = 3600


def reply(reply_id: str, score: int, created: int, parent: str = "t1_p", thread: str = "t") -> Pair:
    return Pair("parent", reply_id, score, thread, "s", created, reply_id, parent)


def ids(pairs) -> set[tuple[str, str]]:
    return {(p.better.reply_id, p.worse.reply_id) for p in pairs}


def test_adjacent_in_time_within_the_hour() -> None:
    # time order a(0) b(10) c(20) d(2h): neighbours a-b, b-c, c-d; c-d is 2 h apart
    replies = [reply("c", 5, 20), reply("a", 5, 0), reply("d", 9, 2 * HOUR), reply("b", 1, 10), reply("e", 0, 5, "t1_q")]
    assert ids(sibling_pairs(replies)) == {("a", "b"), ("c", "b")}  # e has another parent
    # every two within the hour, not only neighbours: a-c tie, so still the same two
    assert ids(sibling_pairs(replies, adjacent=False)) == {("a", "b"), ("c", "b")}
    # no time window: the late d meets c (its neighbour), and with adjacent=False everyone
    assert ids(sibling_pairs(replies, within_seconds=None)) == {("a", "b"), ("c", "b"), ("d", "c")}
    assert ids(sibling_pairs(replies, within_seconds=None, adjacent=False)) == {("a", "b"), ("c", "b"), ("d", "a"), ("d", "b"), ("d", "c")}


def test_gap_rank_gap_and_hours() -> None:
    # distinct scores 0, 1, 3, 10 -> normalised ranks 0, 1/3, 2/3, 1
    replies = [reply("a", 10, 0), reply("b", 3, 60), reply("c", 1, 120), reply("d", 0, 180)]
    pairs = {(p.better.reply_id, p.worse.reply_id): p for p in sibling_pairs(replies)}
    assert set(pairs) == {("a", "b"), ("b", "c"), ("c", "d")}
    assert pairs["a", "b"].gap == 7 and pairs["a", "b"].hours == pytest.approx(60 / HOUR)
    assert pairs["a", "b"].rank_gap == pytest.approx(1 / 3)
    assert ids(sibling_pairs(replies, min_gap=2)) == {("a", "b"), ("b", "c")}
    assert ids(sibling_pairs(replies, min_gap=5)) == {("a", "b")}
    # DialogRPT's test filter: gap >= 20 and rank gap >= 0.5 (here: gap >= 5 and rank gap >= 0.5)
    assert ids(sibling_pairs(replies, min_gap=5, min_rank_gap=0.5)) == set()
    assert ids(sibling_pairs(replies, min_gap=1, min_rank_gap=0.3, adjacent=False)) == {
        ("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")}


def test_cap_per_parent_is_deterministic() -> None:
    replies = [reply(f"r{i}", i % 7, i * 60) for i in range(40)] + [reply(f"q{i}", i, i * 60, "t1_q") for i in range(3)]
    full = sibling_pairs(replies, adjacent=False)
    capped = sibling_pairs(replies, adjacent=False, max_per_parent=5)
    by_parent = {}
    for p in capped:
        by_parent.setdefault(p.better.parent_id, []).append(p)
    assert len(by_parent["t1_p"]) == 5 and len(by_parent["t1_q"]) == 3  # q has only 3 pairs
    assert ids(capped) <= ids(full)
    assert ids(capped) == ids(sibling_pairs(replies, adjacent=False, max_per_parent=5))
    assert ids(capped) != ids(sibling_pairs(replies, adjacent=False, max_per_parent=5, seed=1))


def test_siblings_never_cross_the_thread_split() -> None:
    replies = [reply(f"{t}{i}", i, i * 60, parent=f"t3_{t}", thread=t) for t in "abcdefghij" for i in range(4)]
    split = split_by_thread(replies, valid=0.2, test=0.3)
    test_ids = {p.reply_id for p in split["test"]}
    for name in ("train", "valid"):
        for pair in sibling_pairs(split[name]):
            assert pair.better.reply_id not in test_ids and pair.worse.reply_id not in test_ids


def test_normalize_text() -> None:
    assert normalize_text("see [the FAQ](https://reddit.com/r/x/wiki) or http://a.b/c?d=1 now") == "see the FAQ (URL) or (URL) now"
    assert normalize_text("> you said this\n\nno I   did not\n>again") == "no I did not"
    assert normalize_text("www.example.com") == "(URL)"
    assert normalize_text("> only a quote") == ""
    assert normalize_text("plain\ttext\n") == "plain text"


def test_real_slice_pairs_are_close_and_ordered() -> None:
    files = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]
    if not all(f.is_file() for f in files):
        pytest.skip("shared Reddit data absent")
    pairs = sibling_pairs(load_pairs(files, limit=3000), min_gap=2)
    assert pairs
    for p in pairs:
        assert p.better.parent_id == p.worse.parent_id and p.better.reply_id != p.worse.reply_id
        assert p.better.score - p.worse.score == p.gap >= 2 and 0 <= p.hours <= 1 and 0 < p.rank_gap <= 1
