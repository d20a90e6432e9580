"""The upvote-head sweep that chose the default bundle's objective (run on one H200, 4 configurations at a time).

Each configuration trains on the four college subreddits ApplyingToCollege, College, CollegeMajors,
CollegeAdvice (their train threads) and is evaluated on their test threads and on GradSchool +
CollegeRant (whole subreddits never trained on). The dumps travelled as .jsonl.xz copies with the
fields `load_pairs` reads and texts cut to 500 characters; the base was all-MiniLM-L6-v2 rounded to
fp16. A-D were evaluated on 400 pairs per gap, E-H on 2,000. G was kept (export/weights/reddit-upvotes).

    python sweep.py NAME     # with OUT set, writes OUT/NAME.json and OUT/NAME.tar
"""

import json
import os
import sys
import tarfile
import time

from replyrank.evaluate import EvalOptions
from replyrank.export.rankers import PairSelection, RankerOptions, train_upvote_model

D = ".device/data/"
train = [D + f"{k}_{s}.jsonl.xz" for s in ("ApplyingToCollege", "College", "CollegeMajors", "CollegeAdvice") for k in ("RS", "RC")]
heldout = [D + f"{k}_{s}.jsonl.xz" for s in ("GradSchool", "CollegeRant") for k in ("RS", "RC")]
R = dict(lora_rank=32, learning_rate=3e-4, batch_size=128)
configs = {  # PairSelection(within_seconds, adjacent, min_gap, max_per_parent)
    "A_dialogrpt": (RankerOptions(**R), PairSelection(3600, True, 3, None)),
    "B_wide": (RankerOptions(**R), PairSelection(None, False, 2, 20)),
    "C_wide_reg": (RankerOptions(**R, regression_weight=0.5), PairSelection(None, False, 2, 20)),
    "D_wide_reg_full": (RankerOptions(lora_rank=None, learning_rate=4e-5, batch_size=128, regression_weight=0.5), PairSelection(None, False, 2, 20)),
    "E_dialogrpt_reg": (RankerOptions(**R, regression_weight=0.3), PairSelection(3600, True, 3, None)),
    "F_hour_all": (RankerOptions(**R), PairSelection(3600, False, 3, 10)),
    "G_dialogrpt_2ep": (RankerOptions(**R, epochs=2.0), PairSelection(3600, True, 3, None)),
    "H_dialogrpt_gap1": (RankerOptions(**R), PairSelection(3600, True, 1, None)),
}
name = sys.argv[1]
options, selection = configs[name]
evaluation = EvalOptions() if name < "E" else EvalOptions(pairs_per_gap=2000, groups=2000)
start = time.time()
info = train_upvote_model(train, "/root/rr/base", f"/tmp/{name}", options, selection, heldout, max_pairs=200_000, eval_options=evaluation)
info["seconds"] = time.time() - start
out = os.environ["OUT"]
json.dump(info, open(f"{out}/{name}.json", "w"), indent=1, default=str)
with tarfile.open(f"{out}/{name}.tar", "w") as tar:
    for f in ("adapter", "heads.pt", "replyrank_scorer.json"):
        if os.path.exists(f"/tmp/{name}/{f}"):
            tar.add(f"/tmp/{name}/{f}", arcname=f)
