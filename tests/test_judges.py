"""The judges' kit (export/judges.py) and the GPU script's steps (export/train_judges.py), on CPU with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import REDDIT, build_generator, build_scorer

from replyrank.dumps import Pair
from replyrank.export.judges import Source, build_kit, certainty, evaluate_judges, read_jsonl, upvote_pairs
from replyrank.evaluate import EvalOptions

COLLEGE = REDDIT / "college"
SMALL = [str(COLLEGE / f"{kind}_CollegeAdvice.zst") for kind in ("RS", "RC")]
OTHER = [str(COLLEGE / f"{kind}_CollegeMajors.zst") for kind in ("RS", "RC")]
SCRIPT = Path(__file__).resolve().parents[1] / "export" / "train_judges.py"


def test_certainty_grows_with_the_score_ratio() -> None:
    assert certainty(40, 2) == 1.0  # far more than twice the score: sure
    assert certainty(3, 1) == 1.0  # (3 + 1) / (1 + 1) = 2: SHP's rule, sure
    assert certainty(48, 45) == pytest.approx(0.0911, abs=1e-4)  # log2(49 / 46): a few votes could flip it
    assert certainty(5, -10) == certainty(5, 0)  # below zero counts as zero


def reply(reply_id: str, score: int, created: int, parent: str = "t3_p") -> Pair:
    return Pair("a post", f"reply {reply_id}", score, "p", "s", created, reply_id, parent)


def test_upvote_pairs_hold_both_protocols_once() -> None:
    # a and b are neighbours within the hour (DialogRPT, gap 8 >= 3); c, posted later with 2x b's score, is SHP's
    thread = [reply("a", 12, 0), reply("b", 4, 60), reply("c", 9, 7200)]
    found = {(p.better.reply_id, p.worse.reply_id): (protocol, weight) for p, protocol, weight in upvote_pairs(thread, {"t3_p": 20})}
    assert found[("a", "b")] == ("dialogrpt", pytest.approx(certainty(12, 4)))
    assert found[("c", "b")] == ("shp", 1.0)
    assert len(found) == 2  # b-c are an hour apart (not DialogRPT's); a is earlier than c (not SHP's)


BASE_ONLY = (Source("tiny-chat", None, "chat", 0.9, 20, 0.95), Source("tiny-plain", None, "plain", 1.0, 0, 0.9))
HELD_OUT = (Source("tiny-hot", None, "plain", 1.3, 0, 1.0),)


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> Path:
    if not all(Path(f).is_file() for f in SMALL + OTHER):
        pytest.skip("shared Reddit data absent")
    out = tmp_path_factory.mktemp("kit")
    build_kit(SMALL, OTHER, out, relevance_anchors=40, realism_comments=10, eval_options=EvalOptions(pairs_per_gap=20, relevance_sets=10),
              eval_realism_comments=6, sources=BASE_ONLY, held_out_sources=HELD_OUT)
    return out


def test_the_kit_keeps_held_out_subreddits_to_evaluation(kit: Path) -> None:
    manifest = json.loads((kit / "manifest.json").read_text())
    texts = read_jsonl(kit / "texts.jsonl.xz")
    assert manifest["counts"]["texts"] == len(texts) and manifest["heldout_files"] == ["RS_CollegeMajors.zst", "RC_CollegeMajors.zst"]
    heldout = {parent for parent, _ in read_jsonl(kit / "eval_pairs.jsonl.xz")}
    training = {texts[row[0]] for row in read_jsonl(kit / "upvote_pairs.jsonl.xz")} | {texts[row[0]] for row in read_jsonl(kit / "relevance_sets.jsonl.xz")}
    shared = {text for text in heldout & training if len(text) > 40}  # a one-word comment ("Accounting") may be posted in both
    assert heldout and training and not shared  # no held-out comment among the training comments
    prompts = read_jsonl(kit / "realism_prompts.jsonl.xz")
    assert {split for *_, split in prompts} == {"train", "valid", "eval"}
    assert sum(split == "train" for *_, split in prompts) == 10 * len(BASE_ONLY)
    for row in read_jsonl(kit / "relevance_sets.jsonl.xz"):
        assert len(row) == 6 and len(set(row[1:5])) == 4  # parent, the real reply, three other replies, split


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_on_cpu(kit: Path, tmp_path: Path) -> None:
    generator = build_generator(tmp_path / "generator", "llama")
    base = build_scorer(tmp_path / "base", 2)
    out = tmp_path / "out"
    env = {**os.environ, "JUDGES_DEVICE": "cpu", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}  # three recipes side by side on a small CPU
    done = subprocess.run([sys.executable, str(SCRIPT), "--kit", str(kit), "--base", str(base), "--generator", str(generator), "--out", str(out),
                           "--work", str(tmp_path / "work"), "--minutes", "1", "--min-steps", "5"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["exit_codes"] == {"dialogrpt": 0, "shp": 0, "shp-weighted": 0}, done.stderr[-3000:]
    assert set(summary["machine_replies"]) <= {"tiny-chat", "tiny-plain", "tiny-hot"}
    subprocess.run(["tar", "xf", str(out / "judges.tar"), "-C", str(tmp_path / "work")], check=True)
    record = json.loads((tmp_path / "work" / "shp.json").read_text())
    assert record["steps"] >= 5 and record["validation"] and set(record["curves"]) == {"realism", "relevance", "upvotes"}
    assert (tmp_path / "work" / "shp" / "heads.safetensors").is_file() and (tmp_path / "work" / "shp" / "adapter" / "adapter_config.json").is_file()
    # the CPU side reads the scores brought back through replyrank.evaluate, as `replyrank eval` would
    report = evaluate_judges(kit, OTHER, {"shp": tmp_path / "work" / "shp.npz"}, out / "machine_eval.jsonl.xz", resamples=50)["shp"]
    assert set(report["relevance"]["hits_at_1"]) == {"realism", "relevance", "upvotes"}
    assert "gap>=1" in report["upvotes"]["pairwise"] and report["realism"]["real_replies"] == 6
    assert all(0 <= row["roc_auc"] <= 1 for row in report["realism"]["sources"].values())
