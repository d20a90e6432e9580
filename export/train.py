"""Training the generator with PyTorch and transformers: each loss runs in transformers' `Trainer`,
seeded, with checkpoints that let an interrupted run resume, and outputs moved into place only when complete.

- supervised: a causal LM fine-tuned on `prompt(comment) + reply + EOS`; the loss counts the
  reply tokens only; the prompt template is saved beside the model and used unchanged by the runtime;
- preference: DPO on (comment, chosen, rejected) triples (`train_preference`, the adversarial rounds').

The scorers (upvote head, realism head, discriminator) are `rankers`'.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from replyrank.bundle import GENERATOR, TRAINING_NGRAMS
from replyrank.filters import training_ngram_set

from .convert import GENERATOR_SPEC, ExportError, default_template, load_causal_lm, save_tokenizer, split_gguf
from .folders import move_into_place

CHECKPOINT = "checkpoint"
# What a trained model folder records about its training (metrics, and a generator's adversarial rounds);
# `replyrank export` copies each part's record into the bundle's `training` entry.
TRAINING_RECORD = "replyrank_training.json"


@dataclass
class TrainOptions:
    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 256
    seed: int = 0
    device: str | None = None  # None: cuda when there is one, else cpu
    save_every: int = 200  # optimizer steps between checkpoints
    max_steps: int | None = None
    lora_rank: int | None = None  # generator only: train a LoRA adapter (peft) instead of every weight


def torch_device(requested: str | None = None) -> str:
    """The device a trainer asked for, else cuda when there is one, else cpu."""
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators, for what draws from them (dropout, a new head's weights)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _staging(out: Path) -> Path:
    """A stable staging folder beside `out`, so a re-run finds the checkpoint an interrupted run left."""
    out = Path(out).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ExportError(f"{out} exists and is not a trained model folder; choose an empty or new --out")
    staging = out.with_name(f".{out.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def train_loop(model, batches: list[Any], loss_fn, options: TrainOptions, staging: Path, desc: str) -> list[float]:
    """The training loop shared by every fine-tune here: transformers' `Trainer` over pre-built batches, one a step.

    `loss_fn(model, batch)` is the loss. AdamW (weight decay 0.01), linear schedule with 5% warm-up,
    gradient norm clipped at 1.0; the batches in an order fixed by `options.seed`. A checkpoint every
    `options.save_every` steps goes to STAGING/checkpoint/checkpoint-N, and a re-run resumes from the
    newest complete one. Returns the loss of each step this call ran.
    """
    import contextlib

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    total = max(1, int(len(batches) * options.epochs))
    if options.max_steps:
        total = min(total, options.max_steps)
    order = np.random.default_rng(options.seed).permutation(max(total, len(batches))) % len(batches)
    losses: list[float] = []

    class BatchTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(self.train_dataset)  # the seeded order above; Trainer would shuffle

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = loss_fn(model, inputs)
            losses.append(loss.item())
            return loss

    class NoFinalCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False  # Trainer saves at the end; the callers save the model themselves

    folder = staging / CHECKPOINT
    args = TrainingArguments(
        output_dir=str(folder), max_steps=total, per_device_train_batch_size=1, learning_rate=options.learning_rate,
        weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=max(1, total // 20), max_grad_norm=1.0,
        optim="adamw_torch", save_strategy="steps", save_steps=options.save_every, save_total_limit=1,
        seed=options.seed, use_cpu=torch_device(options.device) == "cpu", report_to="none", remove_unused_columns=False,
        dataloader_pin_memory=False,
    )
    # each batch is one dataset item, and the collator hands it on as it is
    trainer = BatchTrainer(model=model, args=args, train_dataset=[batches[i] for i in order[:total]],
                           data_collator=lambda items: items[0], callbacks=[NoFinalCheckpoint()])
    # trainer_state.json is the last file a checkpoint writes: a folder without it was cut off mid-save
    done = sorted((c for c in folder.glob("checkpoint-*") if (c / "trainer_state.json").is_file()), key=lambda c: int(c.name.split("-")[1]))
    resume = str(done[-1]) if done else None
    print(f"{desc}: {total} steps" + (f", resuming from {done[-1].name}" if done else ""), file=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its logs; stdout is for the commands' data
        trainer.train(resume_from_checkpoint=resume)
    model.eval()
    return losses


def _finish(model, tokenizer, staging: Path, out: Path, extra: dict[str, Any]) -> Path:
    shutil.rmtree(staging / CHECKPOINT, ignore_errors=True)
    model.save_pretrained(staging)
    save_tokenizer(tokenizer, staging)
    (staging / TRAINING_RECORD).write_text(json.dumps(extra, indent=2))
    out = Path(out).expanduser().resolve()
    move_into_place(staging, out)
    return out


def training_record(source: str | Path) -> dict[str, Any] | None:
    """What a model folder trained by replyrank records about its training; None for any other source."""
    record = Path(source).expanduser() / TRAINING_RECORD  # hub ids and GGUF files have none
    return json.loads(record.read_text()) if record.is_file() else None


# --- generator -----------------------------------------------------------------------------


def generator_examples(tokenizer, template: str, pairs: Sequence[tuple[str, str]], max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per pair; prompts keep their first tokens, replies end with EOS."""
    prefix, suffix = template.split("{comment}")
    examples = []
    for comment, reply in pairs:
        comment_ids = tokenizer(comment, add_special_tokens=False, split_special_tokens=True).input_ids[: max_length // 2]
        prompt = tokenizer(prefix, add_special_tokens=False).input_ids + comment_ids + tokenizer(suffix, add_special_tokens=False).input_ids
        reply_ids = tokenizer(" " + reply.strip() if not template.endswith(("\n", " ")) else reply.strip(), add_special_tokens=False, split_special_tokens=True).input_ids
        ids = (prompt + reply_ids)[: max_length - 1] + [tokenizer.eos_token_id]
        if len(ids) > len(prompt):
            examples.append((ids, len(prompt)))
    return examples


def _lm_batches(examples: list[tuple[list[int], int]], batch_size: int, pad_id: int, keep_order: bool = False):
    import torch

    if not keep_order:
        examples = sorted(examples, key=lambda e: len(e[0]))  # similar lengths together: less padding
    batches = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, prompt_length) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])  # the reply tokens only
            mask[row, : len(ids)] = 1
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def reply_perplexity(model, batches, device: str) -> float:
    """exp(mean NLL of reply tokens) over held-out batches."""
    import torch

    from replyrank.metrics import perplexity

    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
            nll += float(loss)
            count += int((labels != -100).sum())
    return perplexity(nll, count)


def pairs_perplexity(model, tokenizer, template: str, pairs: Sequence[tuple[str, str]], options: TrainOptions) -> float | None:
    """Reply perplexity of `model` (already on its device) on (comment, reply) pairs, counted as training counts it; None without pairs."""
    batches = _lm_batches(generator_examples(tokenizer, template, pairs, options.max_length), options.batch_size, _pad_id(tokenizer))
    return reply_perplexity(model, batches, torch_device(options.device)) if batches else None


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _start_generator(base: str, out: str | Path, options: TrainOptions, template: str | None):
    """What both generator trainers start from: (staging, model on its device, tokenizer, template, device, pad id)."""
    seed_everything(options.seed)
    staging = _staging(Path(out))
    model, tokenizer = load_causal_lm(base)
    device = torch_device(options.device)
    model.to(device)
    return staging, model, tokenizer, template or default_template(tokenizer), device, _pad_id(tokenizer)


def train_generator(
    train: Sequence[tuple[str, str]], valid: Sequence[tuple[str, str]], base: str, out: str | Path,
    options: TrainOptions | None = None, template: str | None = None, adapter: str | Path | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` on (comment, reply) pairs; writes the model, tokenizer and prompt template to `out`.

    With `options.lora_rank`, a new LoRA adapter is trained; with `adapter` (one an earlier call saved
    over the same `base`), that adapter is trained further. Either way OUT/adapter holds it, and OUT the merged model.
    """
    options = options or TrainOptions(learning_rate=5e-5, batch_size=8)
    staging, model, tokenizer, template, device, pad = _start_generator(base, out, options, template)
    batches = _lm_batches(generator_examples(tokenizer, template, train, options.max_length), options.batch_size, pad)
    held_out = _lm_batches(generator_examples(tokenizer, template, valid, options.max_length), options.batch_size, pad)
    if not batches:
        raise ExportError("no training examples for the generator after tokenization")
    before = reply_perplexity(model, held_out, device) if held_out else None
    model = _with_adapter(model, options, adapter)

    def loss_fn(model, batch):
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    losses = train_loop(model, batches, loss_fn, options, staging, "train generator")
    after = reply_perplexity(model, held_out, device) if held_out else None
    metrics = {"train_pairs": len(train), "valid_pairs": len(valid), "final_loss": float(np.mean(losses[-20:])) if losses else None,
               "valid_reply_perplexity_before": before, "valid_reply_perplexity": after}
    _save_generator(model, tokenizer, template, [reply for _, reply in train], base, adapter, options, staging, Path(out), metrics)
    return metrics


REFERENCE = "reference.pt"  # a preference run's reference log-probabilities, kept so a resumed run uses the same


def sequence_logps(model, batch: dict[str, Any], device: str):
    """Sum of each row's reply-token log-probabilities (labels != -100)."""
    import torch

    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(device)
    mask = labels != -100
    taken = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (taken * mask).sum(-1), mask.sum(-1)


def reply_logps(model, tokenizer, template: str, pairs: Sequence[tuple[str, str]], max_length: int, device: str = "cpu") -> np.ndarray:
    """log p(reply | prompt(comment)) of each (comment, reply), summed over the reply tokens, as DPO counts it."""
    import torch

    batches = _lm_batches(generator_examples(tokenizer, template, pairs, max_length), 16, _pad_id(tokenizer), keep_order=True)
    with torch.no_grad():
        return np.concatenate([sequence_logps(model, batch, device)[0].cpu().numpy() for batch in batches]) if batches else np.zeros(0)


def _preference_batches(chosen: list[tuple[list[int], int]], rejected: list[tuple[list[int], int]], batch_size: int, pad_id: int):
    """Batches of `batch_size` (chosen, rejected) examples: the chosen rows first, then their rejected rows in the same order."""
    order = sorted(range(len(chosen)), key=lambda i: max(len(chosen[i][0]), len(rejected[i][0])))  # similar lengths together
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batches += _lm_batches([chosen[i] for i in rows] + [rejected[i] for i in rows], 2 * len(rows), pad_id, keep_order=True)
    return batches


def dpo_margin(logps, reference, counts, beta: float, length_normalized: bool = False):
    """DPO's implicit reward of each chosen reply over its rejected one; rows are [chosen..., rejected...].

    Summed log-ratios let a reply's length carry the preference: a long rejected reply is pushed
    down by every one of its tokens. Length-normalized DPO (Tulu 3, Lambert et al., 2024; SimPO's
    normalization) compares per-token log-ratios instead, so beta is about the reply's length times
    larger for the same pull (Tulu 3 used 5).
    """
    ratios = logps - reference
    if length_normalized:
        ratios = ratios / counts.clamp(min=1)
    half = len(ratios) // 2
    return beta * (ratios[:half] - ratios[half:])


def train_preference(
    triples: Sequence[tuple[str, str, str]], base: str, out: str | Path, options: TrainOptions | None = None,
    template: str | None = None, adapter: str | Path | None = None, beta: float = 0.1, nll_weight: float = 0.0,
    length_normalized: bool = False,
) -> dict[str, Any]:
    """DPO (Rafailov et al., 2023) on (comment, chosen, rejected) triples; writes a generator folder as `train_generator` does.

    The reference is the policy as loaded (`base`, with `adapter` where given): its log-probabilities
    are computed once before the first step, as TRL's `precompute_ref_log_probs` does, so no second
    model is held. Loss per pair: -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r)))),
    plus `nll_weight` times the chosen reply's mean token NLL (RPO, Pang et al., 2024). With
    `length_normalized`, each log-ratio is divided by its reply's token count (`dpo_margin`).
    """
    import torch

    options = options or TrainOptions(learning_rate=5e-6, batch_size=8)
    staging, model, tokenizer, template, device, pad = _start_generator(base, out, options, template)
    kept, chosen, rejected = [], [], []
    for comment, good, bad in triples:
        two = generator_examples(tokenizer, template, [(comment, good), (comment, bad)], options.max_length)
        if good.strip() and bad.strip() and good.strip() != bad.strip() and len(two) == 2:
            kept.append((comment, good, bad))
            chosen.append(two[0])
            rejected.append(two[1])
    if not kept:
        raise ExportError(f"no usable preference pairs among {len(triples)}: each needs two different non-empty replies")
    batches = _preference_batches(chosen, rejected, options.batch_size, pad)
    model = _with_adapter(model, options, adapter)
    for module in model.modules():  # the policy is compared with its reference at step 0: no dropout (TRL's disable_dropout)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    reference_path = staging / REFERENCE
    if reference_path.is_file():
        reference = torch.load(reference_path, weights_only=True)
    else:
        model.eval()
        with torch.no_grad():
            reference = [sequence_logps(model, batch, device)[0].cpu() for batch in batches]
        torch.save(reference, reference_path)
    for batch, ref in zip(batches, reference):
        batch["reference"] = ref
    accuracies: list[float] = []

    def loss_fn(model, batch):
        logps, counts = sequence_logps(model, batch, device)
        half = len(logps) // 2
        margin = dpo_margin(logps, batch["reference"].to(device), counts, beta, length_normalized)
        accuracies.append(float((margin > 0).float().mean()))
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        if nll_weight:
            loss = loss + nll_weight * (-logps[:half] / counts[:half]).mean()
        return loss

    losses = train_loop(model, batches, loss_fn, options, staging, "train generator (DPO)")
    metrics = {"objective": "dpo", "beta": beta, "nll_weight": nll_weight, "length_normalized": length_normalized, "train_pairs": len(kept),
               "final_loss": float(np.mean(losses[-20:])) if losses else None,
               "final_reward_accuracy": float(np.mean(accuracies[-20:])) if accuracies else None}
    reference_path.unlink()
    _save_generator(model, tokenizer, template, [good for _, good, _ in kept], base, adapter, options, staging, Path(out), metrics)
    return metrics


def _with_adapter(model, options: TrainOptions, adapter: str | Path | None):
    """`model` with the LoRA adapter to train: `adapter` continued, a new one of `options.lora_rank`, or none (every weight trains)."""
    if adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    if not options.lora_rank:
        return model
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc"]
    present = sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules()} & set(targets))
    config = LoraConfig(r=options.lora_rank, lora_alpha=2 * options.lora_rank, lora_dropout=0.05, target_modules=present, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _save_generator(
    model, tokenizer, template: str, replies: Sequence[str], base: str, adapter: str | Path | None, options: TrainOptions,
    staging: Path, out: Path, metrics: dict[str, Any],
) -> None:
    """A trained generator into `out`: OUT/adapter (LoRA only) and the merged model, its prompt template and training n-grams."""
    if options.lora_rank or adapter:
        model.save_pretrained(staging / "adapter")  # the adapter alone: small enough to move between machines
        model = model.merge_and_unload()
    (staging / GENERATOR_SPEC).write_text(json.dumps({"prompt_template": template, "eos_token_ids": [tokenizer.eos_token_id]}))
    # what the bundle's copy filter checks candidates against: these replies' n-grams, and those an adapter saw before
    earlier = [Path(split_gguf(base)[0]) / TRAINING_NGRAMS] + ([Path(adapter).parent / TRAINING_NGRAMS] if adapter else [])
    ngrams = [training_ngram_set(list(replies))] + [np.load(f) for f in earlier if f.is_file()]
    np.save(staging / TRAINING_NGRAMS, np.unique(np.concatenate(ngrams)), allow_pickle=False)
    print(f"generator metrics: {json.dumps(metrics)}", file=sys.stderr)
    model.to("cpu")
    _finish(model, tokenizer, staging, out, {"model": GENERATOR, "base": base, "metrics": metrics})


def merge_adapter(base: str, adapter: str | Path, out: str | Path) -> Path:
    """Fold a LoRA adapter trained by `train_generator` into its base model and save a plain model folder."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(base)
    staging = _staging(Path(out))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    # the prompt template it was trained with: beside the adapter (train_generator's OUT/adapter) or inside it (a shipped one)
    spec = next((f for f in (Path(adapter) / GENERATOR_SPEC, Path(adapter).parent / GENERATOR_SPEC) if f.is_file()), None)
    if spec is not None:
        shutil.copy(spec, staging / GENERATOR_SPEC)
    ngrams = next((f for f in (Path(adapter) / TRAINING_NGRAMS, Path(adapter).parent / TRAINING_NGRAMS) if f.is_file()), None)
    if ngrams is not None:
        shutil.copy(ngrams, staging / TRAINING_NGRAMS)
    record = training_record(adapter) or {}
    return _finish(merged, tokenizer, staging, Path(out), {"model": GENERATOR, "base": base, "adapter": str(adapter), "adapter_training": record})
