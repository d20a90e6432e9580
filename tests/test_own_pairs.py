"""benchmarks/own_pairs.py pairs --signal asker-replied: which replies count as the asker's choice, on small dumps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from own_pairs import main  # noqa: E402

QUESTION = "How do I pick a thesis advisor when two labs both want me?"


def _submission(sid: str, author: str, created: int) -> dict:
    return {"id": sid, "title": QUESTION, "selftext": f"Thread {sid}.", "author": author, "score": 5,
            "created_utc": created, "subreddit": "GradSchool"}


def _comment(cid: str, parent: str, thread: str, author: str, created: int, body: str, score: int = 1) -> dict:
    return {"id": cid, "parent_id": parent, "link_id": "t3_" + thread, "author": author, "body": body, "score": score,
            "created_utc": created, "subreddit": "GradSchool"}


def _pairs(tmp_path: Path, submissions: list[dict], comments: list[dict], *options: str) -> list[dict]:
    rs, rc, out = tmp_path / "RS_x.jsonl", tmp_path / "RC_x.jsonl", tmp_path / "pairs.jsonl"
    rs.write_text("".join(json.dumps(row) + "\n" for row in submissions))
    rc.write_text("".join(json.dumps(row) + "\n" for row in comments))
    result = CliRunner().invoke(main, ["pairs", "--signal", "asker-replied", "--out", str(out), *options, str(rs), str(rc)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_asker_replied_prefers_the_answered_reply_over_a_sibling_seen_and_left(tmp_path: Path) -> None:
    comments = [
        _comment("a", "t3_s1", "s1", "alice", 110, "What field are you in?"),
        _comment("b", "t3_s1", "s1", "bob", 120, "Good luck with it all.", score=40),
        _comment("o", "t3_s1", "s1", "asker", 150, "Edit: both labs are in chemistry."),  # the asker's own: neither
        _comment("r", "t1_a", "s1", "asker", 200, "Chemistry, thanks for asking!"),
        _comment("c", "t3_s1", "s1", "carol", 300, "Posted after the asker left."),  # never seen: not rejected
    ]
    found = _pairs(tmp_path, [_submission("s1", "asker", 100)], comments)
    assert [(p["chosen"], p["rejected"], p["kind"], p["thread"]) for p in found] == [
        ("What field are you in?", "Good luck with it all.", "submission", "s1")
    ]
    assert found[0]["prompt"].startswith(QUESTION) and found[0]["rejected_score"] == 40


def test_asker_replied_follows_comment_authors_caps_parents_and_skips_deleted_askers(tmp_path: Path) -> None:
    comments = [_comment("top", "t3_s2", "s2", "dana", 101, "Ask both labs what their students do next.")]
    for i in range(3):  # dana answers three replies to her comment and leaves three: nine pairs, capped at two
        comments.append(_comment(f"y{i}", "t1_top", "s2", f"fan{i}", 110 + i, f"Answered reply number {i}."))
        comments.append(_comment(f"n{i}", "t1_top", "s2", f"other{i}", 120 + i, f"Unanswered reply number {i}."))
        comments.append(_comment(f"d{i}", f"t1_y{i}", "s2", "dana", 200 + i, f"Dana answers {i}."))
    comments += [  # a deleted asker cannot be followed, though "[deleted]" wrote a reply to one of the replies
        _comment("p", "t3_s3", "s3", "erin", 110, "Take the one with the kinder advisor."),
        _comment("q", "t3_s3", "s3", "finn", 111, "Take the one with more funding."),
        _comment("z", "t1_p", "s3", "[deleted]", 200, "Thanks."),
    ]
    found = _pairs(tmp_path, [_submission("s2", "gus", 100), _submission("s3", "[deleted]", 100)], comments,
                   "--max-per-parent", "2")
    assert len(found) == 2
    assert all(p["kind"] == "comment" and p["prompt"] == "Ask both labs what their students do next." for p in found)
    assert all(p["chosen"].startswith("Answered") and p["rejected"].startswith("Unanswered") for p in found)
