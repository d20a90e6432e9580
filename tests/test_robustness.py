"""Robustness: hostile text, broken bundles, interrupted exports, threads, determinism, long runs.

Every failure a user can cause must surface as a `ReplyrankError` with a message that says the
fix (a `BundleError` at load time for a bad bundle, an `InputError` for text that cannot be
replied to), never as an exception from onnxruntime, tokenizers or numpy, and never as a
non-finite score.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import psutil
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replyrank
from replyrank.bundle import DISCRIMINATOR, MANIFEST, READABLE_VERSIONS, Bundle
from replyrank.cli import main
from replyrank.generate import MAX_REPLY_CHARS

TESTS = Path(__file__).resolve().parent
COMMENT = "has anyone tried the pasta place near campus"
QUICK = {"candidates": 2, "max_new_tokens": 4, "seed": 0}


@pytest.fixture(scope="module", params=["gpt2_bundle", "llama_bundle"])
def bot(request) -> replyrank.Bot:
    return replyrank.load(request.getfixturevalue(request.param), threads=1, realism_threshold=0.0)


def _check_scores(candidates: list[replyrank.Candidate]) -> None:
    """Scores in range and finite, and the whole thing serializable as the CLI prints it."""
    for c in candidates:
        assert c.realism is None or (0.0 <= c.realism <= 1.0 and math.isfinite(c.realism)), c
        assert c.upvotes is None or math.isfinite(c.upvotes), c
        assert (c.realism is None) == (c.upvotes is None), c
    json.dumps([c.__dict__ for c in candidates], ensure_ascii=False).encode("utf-8")  # no lone surrogate got through


def _check_result(result: replyrank.Result, candidates: int) -> None:
    assert len(result.candidates) == candidates
    _check_scores(result.candidates)
    assert (result.best is None) == (result.reason is not None)
    json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------- text


@pytest.mark.parametrize("comment", ["", " ", "\n\t\r  ", "\u3000\u2003"])
def test_blank_comment_is_an_input_error_for_reply_and_score(bot, comment):
    with pytest.raises(replyrank.InputError, match="empty"):
        bot.reply(comment, **QUICK)
    with pytest.raises(replyrank.InputError, match="empty"):
        bot.score(comment, ["yes"])


HOSTILE = {
    "null bytes": "a\x00b\x00\x00 c",
    "only null bytes": "\x00" * 16,
    "lone surrogate": "\ud800",
    "surrogates in text": "pasta \udfff place \ud83d near",
    "control characters": "\x01\x02\x1b[31mred\x1b[0m\x7f",
    "emoji": "has anyone tried the pasta 🍝🔥👍🏽 place 👨‍👩‍👧‍👦 near campus?",
    "rtl": "هل جرب أحد مطعم المعكرونة بالقرب من الحرم الجامعي؟ \u202eevil\u202c",
    "hebrew": "מישהו ניסה את מקום הפסטה ליד הקמפוס?",
    "cjk": "有人试过校园附近的意大利面店吗？ キャンパスの近くのパスタ屋 캠퍼스 근처",
    "markdown": "# Title\n\n**bold** _it_ `code`\n\n```python\nprint('hi')\n```\n> quote\n- [link](https://example.com)",
    "urls": "see https://example.com/a?b=c&d=%20e#f and www.reddit.com/r/x/comments/abc/ and mailto:a@b.c",
    "special tokens": "<|endoftext|><|im_end|>[SEP][CLS]",
    "special tokens spaced": "<|endoftext|> <|im_end|> [SEP] [CLS] [PAD] [MASK] <|im_start|>",
    "one character": "?",
    "combining marks": "e\u0301\u0301\u0301\u0301 Z\u0336\u0317\u0324a\u0338l\u0334g\u0335o",
}


@pytest.mark.parametrize("comment", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_text_is_replied_to_and_ranked(bot, comment):
    result = bot.reply(comment, **QUICK)
    _check_result(result, 2)
    assert result.comment.encode("utf-8")  # lone surrogates were replaced, everything else kept
    _check_scores(bot.score(comment, [comment, "yes it was fine", COMMENT]).candidates)
    _check_scores(bot.score(COMMENT, [comment, "no idea"]).candidates)


def test_special_tokens_in_a_comment_are_text(bot):
    comment = HOSTILE["special tokens"]
    prompt = bot.generator.encode_prompt(comment, replyrank.GenerationOptions())
    template_ids = len(bot.generator.prefix_ids) + len(bot.generator.suffix_ids)
    assert prompt.comment_tokens > 4  # spelled out, not four special ids
    assert not set(prompt.ids) & set(bot.generator.eos_ids.tolist())
    assert len(prompt.ids) == template_ids + prompt.comment_tokens
    tokenizer = bot.scorers.graph(DISCRIMINATOR).tokenizer
    pair = tokenizer.encode(comment, comment)
    sep, cls = (tokenizer.token_to_id(t) for t in ("[SEP]", "[CLS]"))
    assert pair.ids.count(sep) == 2 and pair.ids.count(cls) == 1  # only the post-processor's


def test_100_kb_comment_is_cut_to_fit_and_said(bot):
    comment = ("pasta place near campus 🍝 " * 4000)[: 100 * 1024]
    result = bot.reply(comment, **QUICK)
    _check_result(result, 2)
    assert result.truncated and result.prompt_tokens <= bot.generator.context_length - QUICK["max_new_tokens"]
    # ranking it as a reply is refused with a clear error (at most MAX_REPLY_CHARS); a long reply within that is scored
    with pytest.raises(replyrank.InputError, match=f"at most {MAX_REPLY_CHARS} characters"):
        bot.score(comment, [comment, "yes"])
    _check_scores(bot.score(comment, [comment[:MAX_REPLY_CHARS], "yes"]).candidates)


def test_invalid_utf8_on_stdin_becomes_replacement_characters(gpt2_bundle):
    raw = b"\xff\xfe broken \xc3\x28 utf-8 \xed\xa0\x80 surrogate \xf0\x9f\x8d pasta \x00 end"
    result = CliRunner().invoke(main, ["reply", "-", "--bundle", str(gpt2_bundle), "-n", "2", "--max-new-tokens", "4", "--json"], input=raw)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["comment"] == raw.decode("utf-8", "replace") and "\ufffd" in data["comment"]
    assert len(data["candidates"]) == 2
    ranked = CliRunner().invoke(main, ["rank", "--comment", "-", "yes", "--bundle", str(gpt2_bundle), "--json"], input=b"\xff\xff\xff")
    assert ranked.exit_code == 0, ranked.output
    assert json.loads(ranked.stdout)["comment"] == "\ufffd" * 3


def test_blank_stdin_is_a_one_line_error(gpt2_bundle):
    result = CliRunner().invoke(main, ["reply", "-", "--bundle", str(gpt2_bundle)], input=b" \n ")
    assert result.exit_code == 1 and "empty" in result.stderr and "Traceback" not in result.output


# any text, including lone surrogates (st.text() leaves them out by default)
TEXT = st.text() | st.text(st.characters(exclude_categories=()), max_size=40)


def _blank(text: str) -> bool:
    return not text.encode("utf-8", "replace").decode("utf-8").strip()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(comment=TEXT)
def test_reply_to_any_text_is_a_result_or_an_input_error(bot, comment):
    try:
        result = bot.reply(comment, **QUICK)
    except replyrank.InputError:
        assert _blank(comment)
        return
    assert not _blank(comment)
    _check_result(result, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(comment=TEXT, replies=st.lists(TEXT, min_size=1, max_size=4))
def test_score_of_any_text_is_a_ranking_or_an_input_error(bot, comment, replies):
    try:
        ranked = bot.score(comment, replies).candidates
    except replyrank.InputError:
        assert _blank(comment)
        return
    assert len(ranked) == len(replies)
    _check_scores(ranked)
    assert [c.kept for c in ranked] == sorted((c.kept for c in ranked), reverse=True)


# ---------------------------------------------------------------- bundles


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, symlinks=True)
    return copy


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _rehash(root: Path) -> None:
    """Rewrite the manifest's hashes, so only the checks after the sha256 one can catch the change."""
    Bundle.read(root, verify_hashes=False).write(root)


def _edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        manifest = _manifest(root)
        change(manifest)
        (root / MANIFEST).write_text(json.dumps(manifest))

    return edit


def _write(relative: str, data: Callable[[bytes], bytes], rehash: bool = False) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = root / relative
        path.write_bytes(data(path.read_bytes()))
        if rehash:
            _rehash(root)

    return edit


def _flip(start: float) -> Callable[[bytes], bytes]:
    """Invert 64 bytes from `start` (a fraction of the length): in the weights the graph still parses, so
    only the hash can tell; in the header it does not parse."""

    def flip(data: bytes) -> bytes:
        at = int(len(data) * start)
        return data[:at] + bytes(b ^ 0xFF for b in data[at : at + 64]) + data[at + 64 :]

    return flip


def _outside_symlink(relative: str) -> Callable[[Path], None]:
    """Move `relative` out of the bundle and leave a symlink to it (same bytes, same hash)."""

    def edit(root: Path) -> None:
        outside = root.parent / ("outside-" + relative.replace("/", "-"))
        shutil.move(root / relative, outside)
        (root / relative).symlink_to(outside, target_is_directory=outside.is_dir())

    return edit


def _swap_tokenizer(root: Path) -> None:
    shutil.copy(root / "generator" / "tokenizer.json", root / "discriminator" / "tokenizer.json")
    _rehash(root)


def _graph_from(source: str, target: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        for path in (root / target).glob("model.onnx*"):
            path.unlink()
        for path in (root / source).glob("model.onnx*"):
            shutil.copy(path, root / target / path.name)
        _rehash(root)

    return edit


NEWER = max(READABLE_VERSIONS) + 1  # a format this replyrank cannot read yet
BROKEN = {
    "no manifest": (lambda root: (root / MANIFEST).unlink(), "no replyrank.json"),
    "manifest not json": (lambda root: (root / MANIFEST).write_text('{"format_version": 1,'), "not valid JSON"),
    "manifest not utf-8": (lambda root: (root / MANIFEST).write_bytes(b"\xff\xfe{}"), "not valid JSON"),
    "manifest a list": (lambda root: (root / MANIFEST).write_text("[1, 2]"), "not a JSON object"),
    "newer format": (_edit_manifest(lambda m: m.update(format_version=NEWER)), f"format version {NEWER}.*upgrade replyrank.*replyrank export"),
    "no format": (_edit_manifest(lambda m: m.pop("format_version")), "format version None"),
    "part missing": (_edit_manifest(lambda m: m.pop("upvotes")), "no valid 'upvotes' entry"),
    "missing file": (lambda root: (root / "generator" / "model.onnx").unlink(), "generator/model.onnx is missing"),
    "truncated graph": (_write("generator/model.onnx", lambda d: d[: len(d) // 2]), "sha256"),
    "corrupted graph": (_write("generator/model.onnx", _flip(0.5)), "sha256"),
    "edited tokenizer": (_write("upvotes/tokenizer.json", lambda d: d + b" "), "sha256"),
    "truncated graph, hashes rewritten": (_write("generator/model.onnx", lambda d: d[: len(d) // 2], rehash=True), "not a loadable ONNX model"),
    "corrupted graph, hashes rewritten": (_write("generator/model.onnx", _flip(0.0), rehash=True), "not a loadable ONNX model"),
    "empty graph, hashes rewritten": (_write("discriminator/model.onnx", lambda d: b"", rehash=True), "not a loadable ONNX model"),
    "missing weights": (lambda root: (root / "generator" / "model.onnx.data").unlink(), "generator/model.onnx.data is missing"),
    "truncated weights": (_write("upvotes/model.onnx.data", lambda d: d[: len(d) // 2]), "sha256"),
    "truncated weights, hashes rewritten": (_write("generator/model.onnx.data", lambda d: d[: len(d) // 2], rehash=True), "not a loadable ONNX model"),
    "garbage graph, hashes rewritten": (_write("upvotes/model.onnx", lambda d: os.urandom(4096), rehash=True), "not a loadable ONNX model"),
    "scorer graph as generator": (_graph_from("discriminator", "generator"), "not a KV-cache causal LM"),
    "generator graph as scorer": (_graph_from("generator", "upvotes"), "re-export"),
    "tokenizer of another model": (_swap_tokenizer, "tokenizer has \\d+ tokens, its model \\d+"),
    "garbage tokenizer, hashes rewritten": (_write("generator/tokenizer.json", lambda d: d[: len(d) // 2], rehash=True), "not a readable tokenizer"),
    "empty tokenizer, hashes rewritten": (_write("upvotes/tokenizer.json", lambda d: b"{}", rehash=True), "not a readable tokenizer"),
    "no prompt template": (_edit_manifest(lambda m: m["generator"].pop("prompt_template")), "lacks prompt_template"),
    "no scorer kind": (_edit_manifest(lambda m: m["discriminator"].pop("kind")), "'discriminator' entry lacks kind"),
    "threshold not a number": (_edit_manifest(lambda m: m.update(realism_threshold="high")), "realism_threshold 'high'"),
    "threshold out of range": (_edit_manifest(lambda m: m.update(realism_threshold=1.5)), "realism_threshold 1.5"),
    "path ../x": (_edit_manifest(lambda m: m["generator"].update(path="../x")), "outside the bundle"),
    "absolute path": (_edit_manifest(lambda m: m["generator"].update(path="/tmp")), "absolute"),
    "file name ../": (_edit_manifest(lambda m: m["upvotes"]["files"].update({"../../../etc/hostname": "0"})), "outside the bundle"),
    "symlinked file outside": (_outside_symlink("generator/model.onnx"), "outside the bundle"),
    "symlinked part outside": (_outside_symlink("discriminator"), "outside the bundle"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_bundle_is_a_bundle_error_at_load(gpt2_bundle, tmp_path, name):
    copy = _copy(gpt2_bundle, tmp_path)
    replyrank.load(copy)  # the copy itself is fine
    breaking, message = BROKEN[name]
    breaking(copy)
    with pytest.raises(replyrank.BundleError, match=message) as error:
        replyrank.load(copy)
    assert "\n" not in str(error.value)  # one line, as the CLI prints it


def test_no_bundle_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(replyrank.BundleError, match="build-default"):
        replyrank.load(tmp_path / "nothing here")


def test_cli_on_a_broken_bundle_is_one_line(gpt2_bundle, tmp_path):
    copy = _copy(gpt2_bundle, tmp_path)
    _write("generator/model.onnx", lambda d: d[:100], rehash=True)(copy)
    result = CliRunner().invoke(main, ["reply", COMMENT, "--bundle", str(copy)])
    assert result.exit_code == 1 and "not a loadable ONNX model" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- writing

EXPORT = """
import sys
sys.path.insert(0, {tests!r})
from tiny import PAIRS
from replyrank.export import ExportOptions, export_bundle
export_bundle({gen!r}, {disc!r}, {upv!r}, {out!r}, PAIRS, ExportOptions(quality_gate=False))
"""


def test_killed_export_leaves_the_previous_bundle_intact(gpt2_bundle, models, tmp_path):
    out = _copy(gpt2_bundle, tmp_path)
    manifest = _manifest(out)
    manifest["threshold_calibration"] = "the previous bundle"  # tells it apart from a re-export of the same models
    (out / MANIFEST).write_text(json.dumps(manifest))
    before = (out / MANIFEST).read_bytes()
    code = EXPORT.format(tests=str(TESTS), gen=str(models["gpt2"]), disc=str(models["disc"]), upv=str(models["upv"]), out=str(out))
    work = tmp_path / "work"  # the export's own temporary folder, which a kill -9 leaves behind
    work.mkdir()
    env = {**os.environ, "TMPDIR": str(work)}
    export = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        # kill -9 once the new bundle is being written: its staging folder holds a graph already
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".bundle.partial-*/generator/model.onnx")):
            assert export.poll() is None, f"export ended (exit {export.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "export never started writing"
            time.sleep(0.005)
        export.send_signal(signal.SIGKILL)
        assert export.wait(30) == -signal.SIGKILL
    finally:
        if export.poll() is None:
            export.kill()
            export.wait()
    assert (out / MANIFEST).read_bytes() == before
    bot = replyrank.load(out)
    assert bot.bundle.threshold_calibration == "the previous bundle"
    _check_result(bot.reply(COMMENT, **QUICK), 2)
    # what the kill left behind is hidden beside the bundle, not in it, and is not a bundle
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]
    assert leftovers and all(p.name.startswith(".bundle.partial-") for p in leftovers)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in Path(gpt2_bundle).iterdir())
    for leftover in leftovers:
        with pytest.raises(replyrank.BundleError, match="export did not finish"):
            replyrank.load(leftover)


# ---------------------------------------------------------------- concurrency and determinism


def _without_timings(result: replyrank.Result) -> dict:
    data = result.to_dict()
    del data["timings_ms"]
    return data


def test_threads_sharing_one_bot_get_the_sequential_results(gpt2_bundle):
    bot = replyrank.load(gpt2_bundle, threads=2, realism_threshold=0.0)
    calls = [(f"{COMMENT} {'and more ' * (i % 7)}{i}", i) for i in range(8 * 25)]
    options = {"candidates": 2, "max_new_tokens": 6}
    start = time.perf_counter()
    sequential = [_without_timings(bot.reply(comment, seed=seed, **options)) for comment, seed in calls]
    sequential_s = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(bot.reply, comment, seed=seed, **options) for comment, seed in calls]
        threaded = [_without_timings(f.result(timeout=120)) for f in futures]  # a deadlock fails here, not hangs
    threaded_s = time.perf_counter() - start
    print(f"\n{len(calls)} calls: sequential {sequential_s:.2f} s, 8 threads {threaded_s:.2f} s")
    assert threaded == sequential
    assert len({json.dumps(r["candidates"]) for r in sequential}) > len(calls) // 2  # seeds and comments do vary


def test_same_seed_gives_byte_identical_json_across_processes(gpt2_bundle):
    args = [sys.executable, "-m", "replyrank", "reply", COMMENT, "--bundle", str(gpt2_bundle), "-n", "4", "--max-new-tokens", "12", "--json", "--seed", "3"]
    outputs = []
    for hash_seed in ("1", "2"):  # different set and dict orders: nothing may depend on them
        run = subprocess.run(args, capture_output=True, check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert b'"timings_ms": {' in run.stdout
        outputs.append(re.sub(rb', "timings_ms": \{[^}]*\}', b"", run.stdout))  # the stdout bytes, less the timings
    assert outputs[0] == outputs[1]
    in_process = _without_timings(replyrank.load(gpt2_bundle).reply(COMMENT, candidates=4, max_new_tokens=12, seed=3))
    assert json.loads(outputs[0]) == in_process


# ---------------------------------------------------------------- long runs


def test_sixty_calls_do_not_grow_memory_or_open_files(gpt2_bundle):
    process = psutil.Process()
    bot = replyrank.load(gpt2_bundle, threads=1)
    # comments of 1 to 120 words, cycled: every prompt shape comes back, so memory that tracks the
    # variety of shapes (an arena keeping the largest) settles, and memory that tracks calls does not
    comments = [" ".join(COMMENT.split()[i % 8] for i in range(words)) for words in (1, 3, 8, 20, 50, 120)]
    fds_before = process.num_fds()
    for call in range(1, 61):
        bot.reply(comments[call % len(comments)], candidates=4, max_new_tokens=16, seed=call)
        if call == 20:
            rss_at_20 = process.memory_info().rss / 2**20
    rss_at_60 = process.memory_info().rss / 2**20
    print(f"\nRSS {rss_at_20:.1f} MiB at call 20 -> {rss_at_60:.1f} MiB at call 60; fds {fds_before} -> {process.num_fds()}")
    assert rss_at_60 - rss_at_20 < 30
    assert process.num_fds() <= fds_before
