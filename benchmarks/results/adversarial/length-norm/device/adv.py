"""On the device: DPO adversarial rounds on the college data (issue #13). argv: work dir, learning rate, beta, nll weight, rounds, length-normalized (0/1), tune comments."""
import sys
sys.path.insert(0, "/root/rr/pkg")
from pathlib import Path
from replyrank.export.adversarial import AdversarialOptions, adversarial_rounds
from replyrank.export.train import TrainOptions

work, lr, beta, nll, rounds, norm, tune = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1", int(sys.argv[7])
D = Path(".device/data")
train = [str(D / f"{k}_{s}.jsonl.xz") for s in ("ApplyingToCollege", "College", "CollegeAdvice", "CollegeMajors") for k in ("RS", "RC")]
held = [str(D / f"{k}_{s}.jsonl.xz") for s in ("GradSchool", "CollegeRant") for k in ("RS", "RC")]
options = AdversarialOptions(
    rounds=rounds, candidates=8, tune_comments=tune, fakes=2500, until_auc=0.65, held_out_comments=200, keep=1, max_reply_tokens=40,
    method="dpo", dpo_beta=beta, dpo_nll=nll, dpo_length_normalized=norm,
    generator=TrainOptions(learning_rate=lr, batch_size=16, max_length=256, lora_rank=16),
    discriminator=TrainOptions(epochs=2, learning_rate=3e-5, batch_size=16, max_length=128),
)
result = adversarial_rounds(train, "/root/rr/base", "/root/rr/minilm", f"{work}/out", options, upvotes="/root/rr/upvotes",
                            work=f"{work}/rounds", held_out=held)
print("TARGETS", result["targets"], flush=True)
