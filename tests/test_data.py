"""Pushshift loading on slices of the real shared Reddit data, and on broken files."""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import pytest

from replyrank.dumps import (
    DataError,
    Filters,
    Pair,
    load_pairs,
    load_pairs_with_stats,
    read_dump,
    split_by_thread,
)

REDDIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit"
COLLEGE = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]
LIMIT = 3000


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared Reddit data absent: {missing}")


@pytest.fixture(scope="module")
def college() -> tuple[list[Pair], dict[str, int]]:
    _need(*COLLEGE)
    return load_pairs_with_stats(COLLEGE, limit=LIMIT)


@pytest.fixture(scope="module")
def submissions() -> dict[str, dict]:
    _need(*COLLEGE)
    return {row["id"]: row for row in read_dump(COLLEGE[1], limit=LIMIT)}


def test_pairs_have_text_and_fields(college: tuple[list[Pair], dict[str, int]]) -> None:
    pairs, stats = college
    assert len(pairs) > 100
    assert stats["pairs"] == len(pairs)
    for pair in pairs:
        assert pair.parent.strip() and pair.reply.strip()
        assert len(pair.parent) <= 1000 and len(pair.reply) <= 1000
        assert pair.parent_id[:3] in ("t1_", "t3_")
        assert not pair.thread_id.startswith("t3_")
        assert pair.subreddit == "CollegeAdvice"
        assert isinstance(pair.score, int) and isinstance(pair.created_utc, int)


def test_top_level_reply_gets_submission_title(
    college: tuple[list[Pair], dict[str, int]], submissions: dict[str, dict]
) -> None:
    top_level = [p for p in college[0] if p.parent_id.startswith("t3_")]
    assert top_level
    for pair in top_level:
        post = submissions[pair.parent_id.removeprefix("t3_")]
        assert pair.thread_id == post["id"]
        assert pair.parent.startswith(post["title"].strip())


def test_files_in_any_order_give_the_same_pairs(college: tuple[list[Pair], dict[str, int]]) -> None:
    # Submissions read after the comments that answer them still become parents.
    assert set(load_pairs(COLLEGE[::-1], limit=LIMIT)) == set(college[0])


def test_deleted_and_bots_are_dropped(college: tuple[list[Pair], dict[str, int]]) -> None:
    pairs, stats = college
    assert stats["dropped_deleted"] > 0
    assert stats["dropped_bot"] > 0
    assert not any(p.reply in ("[deleted]", "[removed]") or p.parent in ("[deleted]", "[removed]") for p in pairs)
    bot_ids = {
        row["id"]
        for row in read_dump(COLLEGE[0], limit=LIMIT)
        if row["author"] == "AutoModerator" or row["author"].lower().endswith("bot")
    }
    assert bot_ids and not bot_ids & {p.reply_id for p in pairs}
    # Turning the filters off lets those rows back in.
    loose = Filters(drop_deleted=False, bot_authors=(), drop_bot_suffix=False)
    loose_pairs, loose_stats = load_pairs_with_stats(COLLEGE, loose, limit=LIMIT)
    assert "dropped_bot" not in loose_stats and "dropped_deleted" not in loose_stats
    assert bot_ids & {p.reply_id for p in loose_pairs}
    assert any(p.reply == "[deleted]" for p in loose_pairs)


def test_split_is_by_thread_and_deterministic(college: tuple[list[Pair], dict[str, int]]) -> None:
    pairs = college[0]
    splits = split_by_thread(pairs, valid=0.2, test=0.2, seed=3)
    assert sum(len(s) for s in splits.values()) == len(pairs)
    threads = {name: {p.thread_id for p in split} for name, split in splits.items()}
    assert all(threads.values())
    assert not threads["train"] & threads["valid"]
    assert not threads["train"] & threads["test"]
    assert not threads["valid"] & threads["test"]
    assert split_by_thread(pairs, valid=0.2, test=0.2, seed=3) == splits
    assert split_by_thread(pairs, valid=0.2, test=0.2, seed=4) != splits
    with pytest.raises(ValueError):
        split_by_thread(pairs, valid=0.6, test=0.6)


def test_pushshift_dump_with_2gib_window() -> None:
    path = REDDIT / "pushshift" / "RC_2005-12.zst"
    _need(path)
    rows = list(read_dump(path, limit=50))
    assert len(rows) == 50 and all("body" in row for row in rows)
    pairs, stats = load_pairs_with_stats([path])
    # No RS_ file for 2005: top-level comments have no parent text.
    assert pairs and all(p.parent_id.startswith("t1_") for p in pairs)
    assert stats["dropped_no_parent"] > 0


def test_not_zstd_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "x.zst"
    path.write_bytes(b"this is not a zstd stream at all\n" * 10)
    with pytest.raises(DataError, match=r"x\.zst: not a zstd dump"):
        list(read_dump(path))


def test_truncated_zstd_is_a_data_error(tmp_path: Path) -> None:
    _need(COLLEGE[0])
    data = COLLEGE[0].read_bytes()
    path = tmp_path / "RC_cut.zst"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"RC_cut\.zst: zstd stream truncated or corrupted after line \d+"):
        list(read_dump(path))


def test_bad_json_lines_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "RC_bad.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b", oops\n')
    with pytest.raises(DataError, match=r"RC_bad\.jsonl: line 3 is not JSON"):
        list(read_dump(path))
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"RC_bad\.jsonl: line 2 is JSON but not an object"):
        list(read_dump(path))
    cut = tmp_path / "RC_cut.bz2"
    cut.write_bytes(bz2.compress(b'{"id": "a"}\n' * 1000)[:40])
    with pytest.raises(DataError, match=r"RC_cut\.bz2"):
        list(read_dump(cut))


def test_plain_and_bz2_dumps_with_loose_fields(tmp_path: Path) -> None:
    submission = {"id": "s1", "title": "Which major?", "selftext": "[removed]", "author": "op"}
    comments = [
        {"id": "c1", "parent_id": "t3_s1", "link_id": "t3_s1", "body": "CS &amp; maths", "ups": 4,
         "created_utc": "100", "author": "x"},
        {"id": "c2", "parent_id": "t1_c1", "link_id": "t3_s1", "body": "agreed", "score": 2,
         "created_utc": 130, "author": "y"},
        {"id": "c3", "parent_id": "t1_c1", "link_id": "t3_s1", "body": "no score", "created_utc": 1},
        {"id": "c4", "parent_id": "t1_c1", "body": "no link_id", "score": 1, "created_utc": 1},
    ]
    (tmp_path / "RS_x.ndjson").write_text(json.dumps(submission) + "\n")
    (tmp_path / "RC_x.bz2").write_bytes(bz2.compress("\n".join(map(json.dumps, comments)).encode()))
    pairs, stats = load_pairs_with_stats([tmp_path / "RC_x.bz2", tmp_path / "RS_x.ndjson"])
    by_id = {p.reply_id: p for p in pairs}
    assert set(by_id) == {"c1", "c2"}
    assert by_id["c1"].parent == "Which major?" and by_id["c1"].score == 4 and by_id["c1"].created_utc == 100
    assert by_id["c2"].parent == "CS & maths" and by_id["c2"].thread_id == "s1"
    assert stats["dropped_bad_row"] == 2


def test_everything_filtered_names_the_filter(tmp_path: Path) -> None:
    rows = [
        {"id": f"c{i}", "parent_id": "t1_c0", "link_id": "t3_s", "body": "far too long " * 20, "score": 1,
         "created_utc": i}
        for i in range(5)
    ]
    path = tmp_path / "RC_long.jsonl"
    path.write_text("\n".join(map(json.dumps, rows)) + "\n")
    with pytest.raises(DataError, match=r"RC_long\.jsonl.*max_chars"):
        load_pairs([path], Filters(max_chars=50))
