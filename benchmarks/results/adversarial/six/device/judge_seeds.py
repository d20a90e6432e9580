"""On the device: how much a fresh judge's AUC moves with its own seed. For round K's saved samples, train the
round's judge recipe (pair model on real vs these fakes, stacked with length) again under other seeds and score
the same held-out pairs. argv: samples files (samples-K.json.gz); seeds come from SEEDS (default 1 2)."""
import gzip, json, os, sys, tempfile
sys.path.insert(0, "/root/rr/pkg")
from pathlib import Path
import numpy as np
from replyrank.metrics import roc_auc
from replyrank.export.adversarial import CALIBRATION_SHARE, Judge, PairScorer, _hold_back
from replyrank.export.train import TrainOptions, train_discriminator

out = {}
for f in sys.argv[1:]:
    s = json.load(gzip.open(f, "rt"))
    rows = {k: [tuple(p) for p in s[k]] for k in ("real_train", "fake_train", "real_test", "fake_test")}
    real_train, real_held = _hold_back(rows["real_train"], CALIBRATION_SHARE)
    fake_train, fake_held = _hold_back(rows["fake_train"], CALIBRATION_SHARE)
    for seed in map(int, os.environ.get("SEEDS", "1 2").split()):
        options = TrainOptions(epochs=2, learning_rate=3e-5, batch_size=16, max_length=128, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            train_discriminator(real_train, fake_train, rows["real_test"], rows["fake_test"], "/root/rr/minilm", tmp, options)
            judge, _ = Judge.fit(PairScorer(Path(tmp), options), real_held, fake_held)
            test = rows["real_test"] + rows["fake_test"]
            auc = roc_auc(np.r_[np.ones(len(rows["real_test"])), np.zeros(len(rows["fake_test"]))], judge.raw(test))
        out[f"{os.path.basename(f)} seed {seed}"] = auc
        print(f, seed, round(auc, 4), flush=True)
        json.dump(out, open(os.path.join(os.environ["OUT"], "judge_seeds.json"), "w"), indent=1)
