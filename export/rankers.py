"""One encoder, two heads: realism and upvotes from a single pass over each (comment, reply) pair.

The GPT-2 + BERT reply bot ran two BERTs per candidate; DialogRPT (Gao et al., 2020) ranks with one
transformer per task and multiplies a human-likeness prior into the feedback ranker. Here both
scores come out of one MiniLM-class encoder (mean-pooled, as sentence-transformers pools it):

- `upvotes`: one logit on the Bradley-Terry scale: P(reply a outscores sibling b) =
  sigmoid(u_a - u_b), trained on DialogRPT-style sibling pairs, optionally with a regression
  on every scored reply's standardised log-score as a second loss on the same head;
- `realism`: two logits (generated, human), trained on real replies against the deployment
  generator's own candidates.

Training happens in two places. The upvote head needs Reddit threads with votes and a GPU
(`train_upvotes`); it can be kept as a LoRA adapter plus the heads, a few MB, so a build on
another machine can rebuild the encoder from the same base. The realism head is fitted where
the generator runs (`train_realism`): multi-task fine-tuning of the whole encoder on real vs
generated replies, while the upvote head is held to the upvote model's own scores on the same
texts (distillation), so one encoder serves both heads. A discriminator (`train_discriminator`) is
the same model with its realism head alone trained, from a fresh encoder: one trainer for both.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from replyrank.bundle import Score
from replyrank.dumps import SiblingPair

from .build_log import terminal
from .convert import ExportError
from .folders import move_into_place
from .train import seed_everything, torch_device

HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "replyrank_pair_model.json"
OUTPUTS = ("realism_logits", "upvotes")  # graph output names, in the order forward returns them
TEXT_NORMALIZATION = "dialogrpt"
UPVOTE_SCORE = Score(
    "upvotes", "Bradley-Terry logit of Reddit's score order among sibling replies: P(a outscores b) = sigmoid(pairwise_scale·(a − b))",
    "logit (only differences matter)",
)
# The default bundle's two heads (realism, upvotes), trained on Reddit: a LoRA adapter over all-MiniLM-L6-v2 and the heads
SHIPPED_SCORER = Path(__file__).with_name("weights") / "reddit-judges"


def is_pair_model(folder: str | Path) -> bool:
    """A folder `save` wrote (encoder + two heads), as opposed to a transformers classifier."""
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / HEADS_FILE).is_file()


@dataclass
class RankerOptions:
    epochs: float = 1.0
    batch_size: int = 64  # pairs per step (each pair is two sequences)
    learning_rate: float = 3e-5
    max_length: int = 128
    lora_rank: int | None = None  # train a LoRA adapter (peft) instead of every encoder weight
    regression_weight: float = 0.0  # > 0: add MSE on standardised log-scores of single replies
    seed: int = 0
    device: str | None = None  # None: cuda when there is one, else cpu
    bf16: bool = True  # autocast on CUDA
    max_steps: int | None = None  # stop after this many optimizer steps (None: every epoch)

    def steps(self, examples: int) -> int:
        """Optimizer steps over `examples` rows (or pairs): the epochs' worth, at most `max_steps`."""
        steps = max(1, int(examples * self.epochs) // self.batch_size)
        return min(steps, self.max_steps) if self.max_steps else steps


# the recipes, in one place: `train upvotes`' defaults (sized for a GPU), the realism head's (`train realism`,
# the default build, `train all`) and a fresh discriminator's (`train discriminator`, each adversarial round), which fit on a CPU
UPVOTE_RECIPE = RankerOptions(epochs=2.0, batch_size=128, learning_rate=3e-4, lora_rank=32)
REALISM_RECIPE = RankerOptions(epochs=2.0, batch_size=16, learning_rate=5e-5, max_length=128)
DISCRIMINATOR_RECIPE = RankerOptions(epochs=1.0, batch_size=16, learning_rate=3e-5, max_length=128)


def mean_pooled(encoder, input_ids, attention_mask, token_type_ids=None):
    """The encoder's last hidden states averaged over the attention mask: the sentence-transformers pooling."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    hidden = encoder(**inputs).last_hidden_state
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def build_model(base: str, lora_rank: int | None = None):
    """(model, tokenizer): `base` (hub id or folder, BERT family) with fresh realism and upvote heads."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    class PairModel(torch.nn.Module):
        """Encoder → mean pooling → (realism logits (batch, 2: generated, human), upvote logit (batch, 1))."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            hidden = encoder.config.hidden_size
            self.dropout = torch.nn.Dropout(0.1)
            self.realism = torch.nn.Linear(hidden, 2)
            self.upvotes = torch.nn.Linear(hidden, 1)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            pooled = self.dropout(mean_pooled(self.encoder, input_ids, attention_mask, token_type_ids))
            return self.realism(pooled), self.upvotes(pooled)

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base, dtype=torch.float32)
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in encoder.named_modules()}
        targets = sorted(names & {"query", "key", "value", "dense", "q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"})
        encoder = get_peft_model(encoder, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05, target_modules=targets))
    return PairModel(encoder), tokenizer


def _encode(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int, device: str) -> dict[str, Any]:
    batch = tokenizer([c for c, _ in pairs], [r for _, r in pairs], padding=True, truncation="longest_first",
                      max_length=max_length, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def predict(model, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 128, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(P(human), upvote logit) per (comment, reply) pair."""
    import torch

    device = next(model.parameters()).device.type
    model.eval()
    realism, upvotes = [], []
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for i in range(0, len(pairs), batch_size):
            logits, ups = model(**_encode(tokenizer, pairs[i : i + batch_size], max_length, device))
            realism.append(logits.float().softmax(-1)[:, 1].cpu().numpy())
            upvotes.append(ups[:, 0].float().cpu().numpy())
    if not realism:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(realism), np.concatenate(upvotes)


def log_score(score: float) -> float:
    """Reddit scores are heavy-tailed and can be negative: sign(s) * log1p(|s|)."""
    return math.copysign(math.log1p(abs(score)), score)


def _schedule(optimizer, total: int):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, max(1, total // 20), total)


def train_upvotes(
    pairs: Sequence[SiblingPair | tuple[str, str, str]], base: str, options: RankerOptions, singles: Sequence[tuple[str, str, float]] = (),
    progress: bool = True, start: tuple[Any, Any] | None = None,
):
    """Fit the upvote head on sibling pairs (Bradley-Terry loss on each pair's score order), or on (comment, preferred
    reply, other reply) triples: a preference file's pairs (`replyrank.preferences`).

    `singles` (comment, reply, Reddit score) add a regression on the standardised log-score to
    the same head when `options.regression_weight` > 0, so every scored reply teaches it, not
    only the ones that have a comparable sibling. `start` (model, tokenizer) continues a two-head
    model instead of fresh heads over `base`; its realism head is then held to what it scored
    before on the same texts (distillation, as `train_realism` holds the upvote head), so the
    shared encoder keeps serving both. Returns (model, tokenizer, target scaling).
    """
    import copy

    import torch
    from tqdm.auto import tqdm

    if len(pairs) < 8:
        raise ExportError(f"too few sibling pairs to train the upvote head: {len(pairs)} (need 8)")
    pairs = [p if isinstance(p, tuple) else (p.better.parent, p.better.reply, p.worse.reply) for p in pairs]
    seed_everything(options.seed)
    device = torch_device(options.device)
    model, tokenizer = start if start is not None else build_model(base, options.lora_rank)
    teacher = copy.deepcopy(model).to(device).eval().requires_grad_(False) if start is not None else None
    if start is not None:
        model.requires_grad_(True)  # an encoder merged from a LoRA adapter comes back frozen (peft freezes its base)
    model.to(device)
    rng = np.random.default_rng(options.seed)
    steps = options.steps(len(pairs))
    order = np.concatenate([rng.permutation(len(pairs)) for _ in range(math.ceil(options.epochs) + 1)])
    targets = np.array([log_score(s) for _, _, s in singles]) if singles else np.zeros(1)
    offset, scale = float(targets.mean()), float(targets.std() or 1.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate, weight_decay=0.01)
    schedule = _schedule(optimizer, steps)
    model.train()
    losses = []
    for step in tqdm(range(steps), desc="train upvotes", file=terminal(), disable=not progress, mininterval=10):
        chunk = [pairs[i] for i in order[step * options.batch_size : (step + 1) * options.batch_size]]
        texts = [(comment, better) for comment, better, _ in chunk] + [(comment, worse) for comment, _, worse in chunk]
        with torch.autocast(device, dtype=torch.bfloat16, enabled=options.bf16 and device == "cuda"):
            batch = _encode(tokenizer, texts, options.max_length, device)
            realism, ups = model(**batch)
            ups = ups[:, 0].float()
            loss = -torch.nn.functional.logsigmoid(ups[: len(chunk)] - ups[len(chunk) :]).mean()
            if teacher is not None:
                with torch.no_grad():
                    reference, _ = teacher(**batch)
                loss = loss + torch.nn.functional.mse_loss(realism.float(), reference.float())
            if options.regression_weight > 0 and singles:
                rows = [singles[i] for i in rng.integers(0, len(singles), options.batch_size)]
                _, predicted = model(**_encode(tokenizer, [(c, r) for c, r, _ in rows], options.max_length, device))
                target = torch.tensor([(log_score(s) - offset) / scale for _, _, s in rows], device=device)
                loss = loss + options.regression_weight * torch.nn.functional.mse_loss(predicted[:, 0].float(), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
    model.eval()
    return model, tokenizer, {"final_loss": float(np.mean(losses[-50:])), "steps": steps, "log_score_offset": offset, "log_score_scale": scale}


def fit_upvote_scale(better: np.ndarray, worse: np.ndarray) -> float:
    """The k that calibrates sigmoid(k * (u_a - u_b)) as P(a outscores b), fitted on held-out pairs.

    Maximum likelihood by Newton's method, k >= 0: a head that orders held-out pairs no better
    than chance gets k near 0, so its differences cannot outweigh realism in selection.
    """
    d = np.asarray(better, dtype=np.float64) - np.asarray(worse, dtype=np.float64)
    if d.size == 0 or not np.any(d):
        return 0.0
    k = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-k * d))
        gradient = float(np.sum((1 - p) * d))
        curvature = float(np.sum(p * (1 - p) * d * d))
        if curvature <= 1e-12:
            break
        step = gradient / curvature
        k = max(0.0, k + step)
        if abs(step) < 1e-6:
            break
    return float(k)


def save(model, tokenizer, out: str | Path, info: dict[str, Any], keep_adapter: bool = True) -> Path:
    """Write `out/`: the encoder (LoRA merged in), its tokenizer, the two heads and `info` (CONFIG_FILE).

    With a LoRA encoder, `out/adapter/` and `out/heads.safetensors` alone rebuild the scorer from its
    base (`load(base, adapter=...)`): the part small enough to move between machines.
    """
    out = Path(out)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    encoder = model.encoder
    if hasattr(encoder, "merge_and_unload"):
        if keep_adapter:
            encoder.save_pretrained(staging / "adapter")
        encoder = encoder.merge_and_unload()
        model.encoder = encoder
    save_heads(model, staging / HEADS_FILE)
    encoder.save_pretrained(staging / "encoder")
    tokenizer.save_pretrained(staging / "encoder")
    (staging / CONFIG_FILE).write_text(json.dumps(info, indent=2, default=_jsonable) + "\n")
    move_into_place(staging, out)
    return out


def read_info(folder: str | Path) -> dict[str, Any]:
    """What a pair-model folder records: its heads' training figures, options and data."""
    return json.loads((Path(folder) / CONFIG_FILE).read_text())


def load(folder: str | Path, base: str | None = None):
    """(model, tokenizer, info) from a folder `save` wrote; with only `adapter/` there, `base` supplies the encoder."""
    folder = Path(folder)
    info = read_info(folder)
    if (folder / "encoder").is_dir():
        model, tokenizer = build_model(str(folder / "encoder"))
    else:
        if base is None:
            raise ExportError(f"{folder} holds a LoRA adapter only; give the base encoder it was trained on")
        from peft import PeftModel

        model, tokenizer = build_model(base)
        model.encoder = PeftModel.from_pretrained(model.encoder, str(folder / "adapter")).merge_and_unload()
    load_heads(model, folder / HEADS_FILE)
    return model.eval(), tokenizer, info


def save_heads(model, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"{head}.{name}": t.detach().cpu().contiguous() for head in ("realism", "upvotes") for name, t in getattr(model, head).state_dict().items()}
    save_file(tensors, str(path))


def load_heads(model, path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    for head in ("realism", "upvotes"):
        getattr(model, head).load_state_dict({n.split(".", 1)[1]: t.float() for n, t in tensors.items() if n.startswith(head + ".")})


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def train_realism(
    model, tokenizer, real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]], test_real: Sequence[tuple[str, str]],
    test_fake: Sequence[tuple[str, str]], options: RankerOptions, distill_weight: float = 1.0, progress: bool = True,
) -> dict[str, Any]:
    """Fit the realism head to real (1) vs generated (0) replies, balanced, with the whole encoder; `model` trains in place.

    With `distill_weight` > 0 the upvote head is held to what it scored before on the same pairs (MSE
    to a frozen copy: distillation), so the shared encoder keeps serving both heads. Returns the
    held-out ROC-AUC and balanced accuracy on `test_real` vs `test_fake`, and how much the upvote
    head moved.
    """
    import copy

    import torch
    from tqdm.auto import tqdm

    from replyrank.filters import normalize_text

    if min(len(real), len(fake)) < 8:
        raise ExportError(f"too few examples to train the realism head: {len(real)} real, {len(fake)} generated (need 8 of each)")
    seed_everything(options.seed)
    device = torch_device(options.device)
    count = min(len(real), len(fake))
    rows = [(normalize_text(c), normalize_text(r), 1) for c, r in real[:count]] + [(normalize_text(c), normalize_text(r), 0) for c, r in fake[:count]]
    random.Random(options.seed).shuffle(rows)
    teacher = copy.deepcopy(model).to(device).eval().requires_grad_(False) if distill_weight > 0 else None
    model.requires_grad_(True)  # an encoder merged from a LoRA adapter comes back frozen (peft freezes its base)
    model.to(device).train()
    steps = options.steps(len(rows))
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.01)
    schedule = _schedule(optimizer, steps)
    order = np.concatenate([np.random.default_rng(options.seed + e).permutation(len(rows)) for e in range(math.ceil(options.epochs) + 1)])
    for step in tqdm(range(steps), desc="train realism head", file=terminal(), disable=not progress, mininterval=5):
        chunk = [rows[i] for i in order[step * options.batch_size : (step + 1) * options.batch_size]]
        batch = _encode(tokenizer, [(c, r) for c, r, _ in chunk], options.max_length, device)
        logits, ups = model(**batch)
        labels = torch.tensor([y for _, _, y in chunk], device=device)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if teacher is not None:
            with torch.no_grad():
                _, reference = teacher(**batch)
            loss = loss + distill_weight * torch.nn.functional.mse_loss(ups, reference)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    objective = "cross-entropy + upvote distillation" if teacher is not None else "cross-entropy"
    metrics: dict[str, Any] = {"train_examples": len(rows), "objective": objective, "distill_weight": distill_weight}
    if test_real and test_fake:
        metrics.update(_held_out(model, teacher, tokenizer, test_real, test_fake, options.max_length))
    model.to("cpu")
    return metrics


def _held_out(model, teacher, tokenizer, real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]], max_length: int) -> dict[str, Any]:
    """The realism head's held-out ROC-AUC and balanced accuracy; with a teacher, how far the upvote head moved from its scores."""
    from replyrank.filters import normalize_text
    from replyrank.metrics import balanced_accuracy, roc_auc

    pairs = [(normalize_text(c), normalize_text(r)) for c, r in list(real) + list(fake)]
    labels = [1] * len(real) + [0] * len(fake)
    probs, upvotes = predict(model, tokenizer, pairs, max_length)
    figures = {"test_examples": len(labels), "roc_auc": roc_auc(labels, probs), "balanced_accuracy": balanced_accuracy(labels, probs)}
    if teacher is not None:
        _, before = predict(teacher, tokenizer, pairs, max_length)
        figures.update(upvotes_kept_correlation=float(np.corrcoef(upvotes, before)[0, 1]), upvotes_kept_max_abs_diff=float(np.abs(upvotes - before).max()))
    return figures


def train_discriminator(
    real: Sequence[tuple[str, str]], fake: Sequence[tuple[str, str]], test_real: Sequence[tuple[str, str]],
    test_fake: Sequence[tuple[str, str]], base: str, out: str | Path, options: RankerOptions = DISCRIMINATOR_RECIPE,
) -> dict[str, Any]:
    """A discriminator: a pair model from `base` whose realism head alone learns real (1) vs generated (0) replies
    (`train_realism`, no distillation), written to `out`; returns its held-out figures."""
    seed_everything(options.seed)  # the fresh heads' initial weights
    model, tokenizer = build_model(base)
    metrics = train_realism(model, tokenizer, real, fake, test_real, test_fake, options, distill_weight=0.0)
    info = {"heads": {"realism": {"trained": True, **metrics}, "upvotes": {"trained": False}}, "base": base, "options": asdict(options),
            "text_normalization": TEXT_NORMALIZATION}
    save(model, tokenizer, out, info)
    return metrics


def export_onnx(model, tokenizer, out_dir: str | Path, max_length: int = 128) -> Path:
    """The two-head model as one fp32 ONNX graph: inputs input_ids, attention_mask, token_type_ids; outputs
    `realism_logits` (batch, 2) and `upvotes` (batch, 1); beside it tokenizer.json and config.json."""
    import contextlib

    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    sample = tokenizer([("a comment", "a reply")], padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes.update({OUTPUTS[0]: {0: "batch"}, OUTPUTS[1]: {0: "batch"}})
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):  # stdout is for the commands' data
        torch.onnx.export(model, tuple(sample[n] for n in names), str(out_dir / "model.onnx"), input_names=names,
                          output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=17, dynamo=False)
    tokenizer.save_pretrained(out_dir)
    model.encoder.config.save_pretrained(out_dir)
    return out_dir
