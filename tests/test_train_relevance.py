"""The relevance trainer (`export/train_relevance.py train`), run on the CPU over a tiny BERT and a tiny data pack:
it writes an adapter, and keeps the state that validated best, not the last one."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny import build_relevance

pytest.importorskip("peft")
ROOT = Path(__file__).resolve().parents[1]
# what a comment is about -> the word its reply answers with: learnt from the training pairs, no word in common
ASKED = ["library", "coffee", "pasta", "campus", "finals", "gym", "weekends", "semester"]
ANSWERED = ["students", "sleep", "break", "website", "desk", "hours", "week", "expensive"]


def _data_pack(folder: Path) -> Path:
    """Comments on one of 8 subjects and their replies, which answer each subject with its own word, over two
    subreddits; validation and held-out sets of 4 (the real reply first, then replies to other comments). The
    validation threads pair the words differently, so the more the encoder learns the training pairs, the worse it
    validates: the run must come back to an earlier state."""
    rng = np.random.default_rng(0)
    texts, parents, replies = [], [], []
    for n in range(96):
        answer = ANSWERED[(n + (64 <= n < 80)) % 8]  # validation threads answer with another subject's word: training overfits
        texts += [f"what do you think about the {ASKED[n % 8]}", f"the {answer} is fine {'' if n % 3 else 'too'}"]
        parents.append(len(texts) - 2)
        replies.append(len(texts) - 1)
    parents, replies = np.array(parents), np.array(replies)

    def sets(rows: np.ndarray) -> np.ndarray:
        return np.array([[[parents[i], replies[j]] for j in [i, *rng.choice(np.setdiff1d(rows, [i]), 3, replace=False)]] for i in rows])

    folder.mkdir()
    with lzma.open(folder / "texts.jsonl.xz", "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(t) + "\n" for t in texts)
    train, valid, heldout = np.arange(64), np.arange(64, 80), np.arange(80, 96)
    np.savez(folder / "data.npz", train_parent=parents[train], train_reply=replies[train], train_subreddit=train % 2,
             valid_sets=sets(valid), heldout_sets=sets(heldout))
    return folder


def test_training_keeps_the_adapter_state_that_validated_best(tmp_path):
    base = build_relevance(tmp_path / "base")
    data, out = _data_pack(tmp_path / "data"), tmp_path / "run"
    command = [sys.executable, str(ROOT / "export" / "train_relevance.py"), "train", "--data", str(data), "--base", str(base),
               "--out", str(out), "--minutes", "0.3", "--reserve", "0", "--batch", "16", "--checks", "8", "--min-steps", "24"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "RELEVANCE_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    validated = [check["valid_hits_at_1"] for check in summary["validation"]]
    assert len(validated) >= 3 and summary["steps"] >= 24
    assert summary["kept"]["valid_hits_at_1"] == max(validated) > validated[-1]
    assert summary["kept"]["step"] < summary["steps"]
    cosines = np.load(out / "cosines.npz")
    kept = cosines["valid_trained"]
    top = kept.max(axis=1, keepdims=True)
    assert np.mean((kept[:, 0] == top[:, 0]) / (kept == top).sum(axis=1)) == pytest.approx(max(validated))
    assert (out / "adapter" / "adapter_config.json").is_file()
