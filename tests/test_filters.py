"""The reply filters: blocklist, length cap, copies of the comment and of training replies; each drop says why."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

import replyrank
from replyrank import BundleError, InputError, ReplyFilters, read_blocklist
from replyrank.bundle import TRAINING_NGRAMS, Bundle
from replyrank.export.assemble import with_training_ngrams
from replyrank.cli import main
from replyrank.filters import COPY_WORDS, ReplyScreen, ngram_hashes, training_ngram_set

COMMENT = "Has anyone tried the new pasta place near campus on Main Street this week?"
TRAINING_REPLIES = [
    "honestly the line was way too long so we just went home and cooked",
    "short one",  # fewer than 8 words: nothing to copy
]


def reasons(result: replyrank.Result) -> dict[str, str | None]:
    return {c.text: c.reason for c in result.candidates}


def screen(**filters) -> ReplyScreen:
    return ReplyScreen(ReplyFilters(**filters))


def test_blocklist_words_phrases_and_regular_expressions() -> None:
    s = screen(blocklist=("darn", "go away", r"re:\bf+u+\b", "re:(?-i:SHOUT)"))
    assert s.reason("Well DARN it.", COMMENT) == 'blocklist: "darn"'  # any case
    assert s.reason("darned good", COMMENT) is None  # whole words only
    assert s.reason("please Go \n  Away now", COMMENT) == 'blocklist: "go away"'  # any whitespace between words
    assert s.reason("fffuuu that", COMMENT) == r'blocklist: "re:\bf+u+\b"'
    assert s.reason("a SHOUT", COMMENT) == 'blocklist: "re:(?-i:SHOUT)"' and s.reason("a shout", COMMENT) is None
    assert s.reason("a perfectly nice reply", COMMENT) is None


def test_bad_entries_are_refused_when_the_filters_are_made(tmp_path) -> None:
    with pytest.raises(InputError, match=r"'re:\[oops' is not a valid regular expression"):
        ReplyFilters(blocklist=("fine", "re:[oops"))
    for bad in ("", "   ", "re:", 3):
        with pytest.raises(InputError, match="non-empty string"):
            ReplyFilters(blocklist=(bad,))
    with pytest.raises(InputError, match="not one string"):
        ReplyFilters(blocklist="darn")
    for bad in (0, -5, 2.5, True):
        with pytest.raises(InputError, match="max_reply_chars"):
            ReplyFilters(max_reply_chars=bad)
    with pytest.raises(InputError, match="comment_copy_words"):
        ReplyFilters(comment_copy_words=-1)
    # a file: comments and blank lines skipped, a bad line named by number
    good = tmp_path / "good.txt"
    good.write_text("# words we never post\n\ndarn\n  go away  \nre:^lol$\n", encoding="utf-8")
    assert read_blocklist(good) == ("darn", "go away", "re:^lol$")
    bad = tmp_path / "bad.txt"
    bad.write_text("darn\nre:(unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.txt:2: blocklist entry 're:\(unclosed' is not a valid regular expression"):
        read_blocklist(bad)


def test_max_reply_chars() -> None:
    s = screen(max_reply_chars=10)
    assert s.reason("0123456789", COMMENT) is None
    assert s.reason("0123456789!", COMMENT) == "longer than 10 characters (11)"


def test_copies_of_the_comment() -> None:
    s = screen()
    # eight words of the comment in a row, whatever the case and punctuation: a copy
    copy = "lol, the NEW pasta place near campus on Main street? never again"
    assert s.reason(copy, COMMENT) == f'copies the comment ({COPY_WORDS}+ words in a row: "the new pasta place near campus on main")'
    # seven in a row is not
    assert s.reason("the new pasta place near campus on, I mean, Main", COMMENT) is None
    assert screen(comment_copy_words=0).reason(copy, COMMENT) is None
    assert screen(comment_copy_words=3).reason("I tried the new one", COMMENT) is not None


def test_ngram_hashes_are_stable_and_ignore_case_and_punctuation() -> None:
    a = ngram_hashes("The line was way too long, so we went home", 8)
    b = ngram_hashes("the LINE was way too long so -- we went home!", 8)
    assert a.dtype == np.uint64 and len(a) == 3 and a.tolist() == b.tolist()
    assert len(ngram_hashes("too short", 8)) == 0
    hashes = training_ngram_set(["one two three four five six seven eight nine", "one two three four five six seven eight"], 8)
    assert len(hashes) == 2 and np.all(np.diff(hashes) > 0)  # sorted, unique
    # the format is a contract with bundles already written: words and hash of one n-gram, pinned
    assert ngram_hashes("The line, was", 3).tolist() == [12810164973769394874]


def test_filters_drop_before_scoring_and_say_why(gpt2_bundle) -> None:
    filters = ReplyFilters(blocklist=("darn",), max_reply_chars=60)
    bot = replyrank.load(gpt2_bundle, realism_threshold=0.0, filters=filters)
    scored: list[str] = []
    real_scorers = bot.scorers

    def recording(comment, replies, names=None):
        scored.extend(replies)
        return real_scorers(comment, replies)

    bot.scorers = recording
    replies = ["darn it", "x" * 61, "the new pasta place near campus on Main Street, yes", "it was fine", ""]
    result = bot.score(COMMENT, replies)
    why = reasons(result)
    assert why["darn it"] == 'blocklist: "darn"'
    assert why["x" * 61] == "longer than 60 characters (61)"
    assert why[replies[2]].startswith("copies the comment (8+ words in a row")
    assert why["it was fine"] is None and why[""] == "empty"
    assert scored == ["it was fine"]  # filtered candidates cost no scoring
    dropped = [c for c in result.candidates if not c.kept]
    assert all(c.realism is None and c.pick_score is None for c in dropped)
    assert result.best.text == "it was fine"
    # nothing left: the result says so
    result = bot.score(COMMENT, ["darn", "darn again"])
    assert result.best is None and result.reason == "no candidate passed selection (all empty, duplicates or filtered)"


def test_reply_candidates_are_filtered(gpt2_bundle) -> None:
    bot = replyrank.load(gpt2_bundle, realism_threshold=0.0, filters=ReplyFilters(blocklist=("re:.",)))
    result = bot.reply(COMMENT, candidates=3, max_new_tokens=6, seed=1)
    assert result.best is None and all(c.reason == 'blocklist: "re:."' for c in result.candidates)
    # the default filters keep what the model writes (the same candidates, scored)
    plain = replyrank.load(gpt2_bundle, realism_threshold=0.0).reply(COMMENT, candidates=3, max_new_tokens=6, seed=1)
    assert plain.best is not None and sorted(c.text for c in plain.candidates) == sorted(c.text for c in result.candidates)


@pytest.fixture(scope="module")
def bundle_with_training_ngrams(gpt2_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("ngrams") / "bundle"
    shutil.copytree(gpt2_bundle, root)
    bundle = Bundle.read(root)
    generator = with_training_ngrams(bundle.generator, bundle.folder(bundle.generator), TRAINING_REPLIES)
    replace(bundle, generator=generator).write(root)
    return root


def test_a_bundle_with_training_ngrams_drops_copies(bundle_with_training_ngrams, gpt2_bundle) -> None:
    bundle = Bundle.read(bundle_with_training_ngrams)
    assert bundle.generator.training_ngrams == TRAINING_NGRAMS and TRAINING_NGRAMS in bundle.generator.files
    assert bundle.generator.training_ngram_words == COPY_WORDS
    manifest = json.loads((bundle_with_training_ngrams / "replyrank.json").read_text())
    assert manifest["generator"]["training_ngrams"] == TRAINING_NGRAMS
    assert Bundle.from_json(manifest).generator == bundle.generator
    assert len(bundle.read_training_ngrams()) == len(training_ngram_set(TRAINING_REPLIES))

    bot = replyrank.load(bundle_with_training_ngrams, realism_threshold=0.0)
    copy = "Yeah, the line was WAY too long so we just went home, sadly"
    result = bot.score("how was the party?", [copy, "it was fine", "short one"])
    why = reasons(result)
    assert why[copy] == 'copies a training reply (8+ words in a row: "the line was way too long so we")'
    assert why["it was fine"] is None and why["short one"] is None
    # the user may turn it off
    kept = replyrank.load(bundle_with_training_ngrams, realism_threshold=0.0, filters=ReplyFilters(training_copies=False))
    assert reasons(kept.score("how was the party?", [copy]))[copy] is None
    # a bundle without the set has nothing to compare with
    assert Bundle.read(gpt2_bundle).generator.training_ngrams is None and Bundle.read(gpt2_bundle).read_training_ngrams() is None
    assert reasons(replyrank.load(gpt2_bundle, realism_threshold=0.0).score("how was the party?", [copy]))[copy] is None


def test_broken_training_ngrams_fail_at_load(bundle_with_training_ngrams, tmp_path) -> None:
    # a file the manifest names but does not hash
    root = tmp_path / "unlisted"
    shutil.copytree(bundle_with_training_ngrams, root)
    manifest = json.loads((root / "replyrank.json").read_text())
    del manifest["generator"]["files"][TRAINING_NGRAMS]
    (root / "replyrank.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not among the generator's files"):
        replyrank.load(root)
    # an array of the wrong kind, hashed as if it were right
    root = tmp_path / "wrong"
    shutil.copytree(bundle_with_training_ngrams, root)
    np.save(root / "generator" / TRAINING_NGRAMS, np.array([3.0, 1.0]))
    Bundle.read(root, verify_hashes=False).write(root)
    with pytest.raises(BundleError, match="not a sorted 1-D array of unique uint64"):
        replyrank.load(root)
    # not an array at all
    (root / "generator" / TRAINING_NGRAMS).write_bytes(b"not numpy")
    Bundle.read(root, verify_hashes=False).write(root)
    with pytest.raises(BundleError, match="not a readable .npy array"):
        replyrank.load(root)


def test_cli_flags(gpt2_bundle, tmp_path) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# no pasta talk\npasta\n", encoding="utf-8")
    runner = CliRunner()
    args = ["rank", "--comment", COMMENT, "i love pasta", "it was fine", "way too long a reply", "--bundle", str(gpt2_bundle), "--threshold", "0"]
    result = runner.invoke(main, [*args, "--blocklist", str(blocklist), "--max-reply-chars", "12", "--json"])
    assert result.exit_code == 0, result.output
    why = {c["text"]: c["reason"] for c in json.loads(result.output)["candidates"]}
    assert why == {"i love pasta": 'blocklist: "pasta"', "it was fine": None, "way too long a reply": "longer than 12 characters (20)"}
    # a bad pattern: one line naming the file and line, exit 1, before any bundle is read
    blocklist.write_text("pasta\nre:*\n", encoding="utf-8")
    for command in (args, ["reply", COMMENT, "--bundle", str(tmp_path / "no-such-bundle")]):
        result = runner.invoke(main, [*command, "--blocklist", str(blocklist)])
        assert result.exit_code == 1 and "blocklist.txt:2: blocklist entry 're:*' is not a valid regular expression" in result.output
    result = runner.invoke(main, [*args, "--max-reply-chars", "0"])
    assert result.exit_code == 2 and "--max-reply-chars" in result.output
    result = runner.invoke(main, ["reply", COMMENT, "--bundle", str(gpt2_bundle), "-n", "2", "--max-new-tokens", "4",
                                  "--max-reply-chars", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert all(c["reason"].startswith("longer than 1 characters") or c["reason"] in ("empty", "duplicate")
               for c in json.loads(result.output)["candidates"])
