"""On the device: length-normalized DPO rounds with old tells kept in play (issue #13). argv: work dir, dpo replay K, judge history (0/1)."""
import sys
sys.path.insert(0, "/root/rr/pkg")
from pathlib import Path
from replyrank.export.adversarial import AdversarialOptions, adversarial_rounds
from replyrank.export.train import TrainOptions

work, replay, history = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
D = Path(".device/data")
train = [str(D / f"{k}_{s}.jsonl.xz") for s in ("ApplyingToCollege", "College", "CollegeAdvice", "CollegeMajors") for k in ("RS", "RC")]
held = [str(D / f"{k}_{s}.jsonl.xz") for s in ("GradSchool", "CollegeRant") for k in ("RS", "RC")]
options = AdversarialOptions(  # ../length-norm's G, with 2,000 tune comments a round, up to 6 rounds, and the two history levers
    rounds=6, candidates=8, tune_comments=2000, fakes=2500, until_auc=0.65, held_out_comments=200, keep=1, max_reply_tokens=40,
    method="dpo", dpo_beta=3.0, dpo_nll=1.0, dpo_length_normalized=True, dpo_replay=replay, judge_history=history,
    generator=TrainOptions(learning_rate=1e-4, batch_size=16, max_length=256, lora_rank=16),
    discriminator=TrainOptions(epochs=2, learning_rate=3e-5, batch_size=16, max_length=128),
)
result = adversarial_rounds(train, "/root/rr/base", "/root/rr/minilm", f"{work}/out", options, upvotes="/root/rr/upvotes",
                            work=f"{work}/rounds", held_out=held)
print("TARGETS", result["targets"], flush=True)
