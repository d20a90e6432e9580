"""`replyrank batch` on a real slice of the shared Reddit dumps, in local Ray mode with a tiny bundle.

One Ray session (2 CPUs) serves the whole module: starting Ray takes seconds on two cores. The
in-process runs use it directly; the subprocess runs (the SIGKILL and resume test) join it
with --address, as a run on a cluster would.
"""

from __future__ import annotations

import html
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from replyrank.batch import BatchOptions, Selection, output_schema, run_batch, stage_dump
from replyrank.batch.stage import remove_partial_folders
from replyrank.dumps import load_pairs_with_stats, read_dump
from replyrank.errors import InputError, ReplyrankError

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

REDDIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit"
ADVICE = [REDDIT / "college" / "RC_CollegeAdvice.zst", REDDIT / "college" / "RS_CollegeAdvice.zst"]
QUICK = {"candidates": 2, "max_new_tokens": 6}  # sampling overrides; the rest are the bundle's


def _need(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(f"shared Reddit data absent: {missing}")


@pytest.fixture(scope="module")
def ray_address():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _results(out: Path, fmt: str = "parquet") -> list[dict]:
    files = sorted((out / "results").glob(f"*.{fmt}"))
    if fmt == "jsonl":
        return [json.loads(line) for f in files for line in f.read_text().splitlines()]
    return [row for f in files for row in pq.read_table(f).to_pylist()]


DELETED = ("", "[deleted]", "[removed]", "[deleted by user]")


def _text(row: dict) -> str:
    """A dump row's text as ranking sees it: a comment's body, a submission's title (and selftext, unless removed)."""
    if "title" not in row:
        return html.unescape(row["body"]).strip()
    title, selftext = html.unescape(row["title"]).strip(), html.unescape(row.get("selftext") or "").strip()
    return title if selftext in DELETED else f"{title}\n\n{selftext}"


def _usable(row: dict) -> bool:
    """Training's text filter, written out again so that the test does not check the code with itself."""
    author = row.get("author") or ""
    return _text(row) not in DELETED and author != "AutoModerator" and not author.lower().endswith("bot") and len(_text(row)) <= 1000


def _name(row: dict) -> str:
    return ("t3_" if "title" in row else "t1_") + row["id"]


def test_score_mode_ranks_every_real_reply_once_as_training_pairs_them(ray_address, gpt2_bundle, tmp_path):
    _need(*ADVICE)
    options = BatchOptions(mode="score", buckets=4, shard_rows=150, limit=800)
    summary = run_batch(ADVICE, tmp_path / "out", gpt2_bundle, options)
    rows = _results(tmp_path / "out")
    pairs, stats = load_pairs_with_stats(ADVICE, limit=800)
    assert sorted(r["id"] for r in rows) == sorted("t1_" + p.reply_id for p in pairs)  # the same replies, each once
    assert summary["output_rows"] == len(rows) == len(pairs) and summary["errors"] == 0
    skipped = summary["skipped"]
    assert skipped["parent_filtered"] == stats.get("dropped_parent_filtered", 0)
    assert skipped.get("no_parent", 0) == stats.get("dropped_no_parent", 0)
    # every row read is either an output row, or skipped with a reason
    assert summary["rows_read"] == summary["output_rows"] + sum(skipped.values()) + sum(summary["bad_rows"].values())
    assert pq.read_table(next((tmp_path / "out" / "results").glob("*.parquet"))).schema.equals(output_schema("score"))

    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        assert sorted(r["rank"] for r in members) == list(range(1, len(members) + 1))
        assert all(r["siblings"] == len(members) for r in members)
        # not strict: one reply is kept whenever one was scored (none when all were dropped before scoring)
        assert sum(r["picked"] for r in members) == any(r["realism"] is not None for r in members)
        best_score = max(r["score"] for r in members)
        assert all((r["score_rank"] == 1) == (r["score"] == best_score) for r in members)
    assert any(len(m) > 1 for m in groups.values())
    assert summary["rates"]["rank_rows_per_s"] > 0 and summary["this_run"]["workers"] == 2


def test_reply_mode_filters_counts_bad_rows_and_writes_jsonl(ray_address, gpt2_bundle, tmp_path):
    _need(*ADVICE)
    good = [row for row in read_dump(ADVICE[0], limit=120)]
    broken = tmp_path / "RC_broken.jsonl"
    lines = [json.dumps(row) for row in good[:10]] + ["{not json", json.dumps({"id": "x1", "body": "no parent"}), "[1, 2]"]
    broken.write_text("\n".join(lines) + "\n")
    since = 1_500_000_000  # 2017-07-14: about a third of these rows are older
    selection = Selection(min_score=2, subreddits=("collegeadvice",), since=since)
    options = BatchOptions(mode="reply", selection=selection, sampling=QUICK, limit=100, buckets=3, output_format="jsonl")
    summary = run_batch([ADVICE[0], broken], tmp_path / "out", gpt2_bundle, options)

    rows = _results(tmp_path / "out", "jsonl")
    expected = {_name(r) for r in good[:100] if _usable(r) and r["score"] >= 2 and r["created_utc"] >= since}
    assert {r["id"] for r in rows} == expected and len(rows) == len(expected) > 5
    assert summary["bad_rows"] == {"not_json": 2, "bad_row": 1, "stream_error": 0}
    assert summary["skipped"]["duplicate"] == 10  # the broken file repeats ten real rows
    assert summary["skipped"]["min_score"] > 0 and summary["skipped"]["time_range"] > 0
    for row in rows:
        assert set(row) == set(output_schema("reply").names)
        assert row["error"] is None and row["reply"] and len(row["candidates"]) == 2
        assert row["reply"] == row["candidates"][0]["text"] and 0 <= row["realism"] <= 1
    # a row's candidates come from its own seed: the same whichever shard or worker drew them
    import replyrank
    from replyrank.batch import row_seed

    row = rows[0]
    comment = next(_text(r) for r in good if _name(r) == row["id"])
    again = replyrank.load(gpt2_bundle).reply(comment, None, **QUICK, seed=row_seed(0, row["id"]))
    assert [c.text for c in again.candidates] == [c["text"] for c in row["candidates"]]


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "replyrank", "batch", *args]


def test_a_run_killed_mid_rank_resumes_with_every_row_exactly_once(ray_address, gpt2_bundle, tmp_path):
    _need(*ADVICE)
    out = tmp_path / "out"
    args = _cli([*(f"--data={p}" for p in ADVICE), f"--out={out}", f"--bundle={gpt2_bundle}", f"--address={ray_address}",
                 "--limit=120", "--buckets=2", "--shard-rows=8", "-n", "2", "--max-new-tokens=6"])
    killed = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "results").glob("*.parquet")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read().decode()[-2000:]
    shards = [p for marker in (out / "work").glob("b*.json") for p in json.loads(marker.read_text())["shards"]]
    done_before = {p.stem for p in (out / "results").glob("*.parquet")}
    assert 0 < len(done_before) < len(shards), "the kill landed outside the rank step; make the work longer"

    resumed = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout)  # stdout holds the summary and nothing else
    assert summary["this_run"]["shards_ranked"] == len(shards) - len(done_before)
    assert summary["this_run"]["dumps_staged"] == 0  # staged before the kill: not read again

    ids = [r["id"] for r in _results(out)]
    expected = {_name(r) for p in ADVICE for r in read_dump(p, limit=120) if _usable(r)}
    assert len(ids) == len(set(ids)) == summary["output_rows"]  # nothing doubled
    assert set(ids) == expected  # nothing missing
    assert not [p.name for p in (out / "results").iterdir() if not p.name.endswith(".parquet")]


def _kill_when(args: list[str], ready) -> None:
    """Start the command, SIGKILL it as soon as `ready()` holds (or it ends by itself)."""
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ready() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()


@pytest.mark.slow
def test_kills_while_staging_then_while_ranking_still_end_with_every_row_once(ray_address, gpt2_bundle, tmp_path):
    _need(*ADVICE)
    out = tmp_path / "out"
    args = _cli([*(f"--data={p}" for p in ADVICE), f"--out={out}", f"--bundle={gpt2_bundle}", f"--address={ray_address}",
                 "--limit=150", "--buckets=3", "--shard-rows=8", "-n", "2", "--max-new-tokens=6"])
    def committed() -> int:
        return len(list((out / "results").glob("*.parquet")))

    _kill_when(args, lambda: any((out / "staged").glob("*.partial-*")))  # in step 1
    assert committed() == 0 and not list((out / "work").glob("b*.json"))
    _kill_when(args, lambda: committed() >= 2)  # in step 3
    _kill_when(args, lambda: committed() >= 6)  # again, after resuming
    shards = [p for marker in (out / "work").glob("b*.json") for p in json.loads(marker.read_text())["shards"]]
    assert 6 <= committed() < len(shards)
    finished = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    ids = [r["id"] for r in _results(out)]
    assert len(ids) == len(set(ids)) == json.loads(finished.stdout)["output_rows"]
    assert set(ids) == {_name(r) for p in ADVICE for r in read_dump(p, limit=150) if _usable(r)}


def test_a_file_that_is_not_a_dump_is_refused_in_one_line_naming_it(tmp_path, gpt2_bundle):
    from replyrank.cli import main

    cases = {
        "notes.jsonl": "hello, this is not JSON\n",
        "table.jsonl": '{"a": 1, "b": 2}\n',
        "RC_2020-01.txt": '{"id": "a", "body": "hi"}\n',
        "RC_2020-01.zst": "plain text with a .zst name\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = CliRunner().invoke(main, ["batch", "--data", str(path), "--out", str(tmp_path / "out"), "--bundle", str(gpt2_bundle)])
        assert result.exit_code == 1, (name, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(path) in lines[0], (name, result.output)
        assert "Traceback" not in result.output


def test_a_busy_folder_one_with_other_settings_and_too_many_workers_are_refused(tmp_path, gpt2_bundle, ray_address):
    dump = tmp_path / "RC_tiny.jsonl"
    dump.write_text(json.dumps({"id": "c1", "parent_id": "t3_s1", "link_id": "t3_s1", "body": "hello there", "author": "a",
                                "created_utc": 1, "score": 3, "subreddit": "x"}) + "\n")
    with pytest.raises(InputError, match="needs 3 cores; Ray has 2"):
        run_batch([dump], tmp_path / "out", gpt2_bundle, BatchOptions(mode="score", workers=3, buckets=1))
    with pytest.raises(InputError, match="other settings \\(mode"):
        run_batch([dump], tmp_path / "out", gpt2_bundle, BatchOptions(mode="reply", buckets=1))
    from replyrank.batch import folder_lock

    with folder_lock(tmp_path / "out"), pytest.raises(InputError, match="in use by another replyrank batch run"):
        run_batch([dump], tmp_path / "out", gpt2_bundle, BatchOptions(mode="score", buckets=1))


def test_staging_commits_a_whole_folder_and_a_new_run_removes_what_a_killed_one_left(tmp_path):
    dump = tmp_path / "RS_tiny.jsonl"
    dump.write_text(json.dumps({"id": "s1", "title": "T &amp; C", "selftext": "[removed]", "author": "a", "created_utc": 5,
                                "score": 1, "subreddit": "x"}) + "\n")
    staged = tmp_path / "staged"
    leftover = staged / "RS_tiny.partial-0123456789ab"
    leftover.mkdir(parents=True)
    (leftover / "b0000.parquet").write_text("half a file")
    remove_partial_folders(staged)
    assert not leftover.exists()
    first = stage_dump(str(dump), str(staged / "RS_tiny"), buckets=2, limit=None)
    # an attempt that finishes second (Ray ran the task again on another node) leaves the first one's folder whole
    second = stage_dump(str(dump), str(staged / "RS_tiny"), buckets=2, limit=None)
    assert first == second and first["rows"] == 1
    assert sorted(p.name for p in staged.iterdir()) == ["RS_tiny"]
    (rows,) = [pq.read_table(p).to_pylist() for p in (staged / "RS_tiny").glob("b*.parquet")]
    assert rows == [{"name": "t3_s1", "parent_id": None, "thread_id": "s1", "subreddit": "x", "author": "a",
                     "created_utc": 5, "score": 1, "text": "T & C"}]


def test_a_failure_inside_ray_stops_the_run_with_one_line_naming_its_cause(tmp_path, gpt2_bundle, ray_address):
    dump = tmp_path / "RC_tiny.jsonl"
    rows = [{"id": f"c{i}", "parent_id": "t3_s1", "link_id": "t3_s1", "body": f"reply number {i}", "author": "a",
             "created_utc": i, "score": i, "subreddit": "x"} for i in range(4)]
    dump.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = BatchOptions(mode="reply", sampling=QUICK, buckets=1, shard_rows=2)
    run_batch([dump], tmp_path / "out", gpt2_bundle, options)
    (result, *_) = sorted((tmp_path / "out" / "results").glob("*.parquet"))
    result.unlink()
    work = tmp_path / "out" / "work" / result.name
    work.write_text("not a parquet file")  # the shard to rank again cannot be read
    with pytest.raises(ReplyrankError) as raised:
        run_batch([dump], tmp_path / "out", gpt2_bundle, options)
    message = str(raised.value)
    assert "\n" not in message and "ArrowInvalid" in message and str(work) in message and "same command" in message


def test_an_address_where_no_cluster_answers_is_refused_at_once_in_one_line(tmp_path, gpt2_bundle):
    _need(ADVICE[0])
    import socket

    with socket.socket() as probe:  # a port nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(_cli([f"--data={ADVICE[0]}", f"--out={tmp_path / 'out'}", f"--bundle={gpt2_bundle}",
                                f"--address=127.0.0.1:{port}"]), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"Error: no Ray cluster answers at 127.0.0.1:{port} "
                                                "([Errno 111] Connection refused); start one with `ray start --head`"]


def test_a_shard_is_committed_once_with_every_id_once_when_ray_delivers_a_block_twice():
    import pyarrow as pa

    from replyrank.batch.pipeline import ShardCollector

    def block(*rows: tuple[str, str]) -> pa.Table:
        return pa.table({"shard": [shard for shard, _ in rows], "id": [row_id for _, row_id in rows]})

    commits: list[tuple[str, list[str]]] = []
    collector = ShardCollector({"a": 3, "b": 1}, lambda shard, table: commits.append((shard, table.column("id").to_pylist())) or 3)
    assert collector.add(block(("a", "t1_1"), ("a", "t1_2"), ("b", "t1_9"))) == 3
    assert collector.add(block(("a", "t1_1"), ("a", "t1_2"))) == 0  # a retried task's block again: no new id
    assert commits == [("b", ["t1_9"])]
    assert collector.add(block(("a", "t1_3"))) == 1
    assert collector.add(block(("a", "t1_3"), ("b", "t1_9"))) == 0  # after both commits: nothing is committed again
    assert [shard for shard, _ in commits] == ["b", "a"] and sorted(set(commits[1][1])) == ["t1_1", "t1_2", "t1_3"]
    assert collector.incomplete() == []
    half = ShardCollector({"c": 2}, lambda shard, table: 2)
    half.add(block(("c", "t1_5")))
    assert half.incomplete() == ["c"]


def test_without_the_extra_batch_help_names_the_install_command():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from replyrank.cli import main\n"
        "main(sys.argv[1:], prog_name='replyrank')\n"
    )
    shown = subprocess.run([sys.executable, "-c", code, "batch", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "pip install 'replyrank[batch]'" in shown.stdout
    run = subprocess.run([sys.executable, "-c", code, "batch", "--data", "x", "--out", "y"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines() == [
        "Error: `replyrank batch` needs the batch extra (ray is missing): pip install 'replyrank[batch]'"
    ]
