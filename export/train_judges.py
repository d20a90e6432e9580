"""Train the three judges on one GPU from a kit `export/judges.py` wrote: realism, relevance, upvotes on one encoder.

Run from the repository root on the GPU machine (torch, transformers, peft; `gguf` for the generator):

    python3 export/train_judges.py --kit KIT --base MINILM_FOLDER --generator SMOLLM2.gguf --out OUT

1. Machine replies: SmolLM2-135M-Instruct untuned (its chat template, and plain text), the shipped
   generator adapter, and a held-out adapter, each at its own temperature / top-k / top-p
   (`judges.SOURCES`), for the kit's realism comments; the held-out sources for the held-out
   subreddits' comments only.
2. Each upvote recipe (`VARIANTS`) trains one LoRA adapter (rank 32 over every projection, as the
   shipped upvote head) and three heads on mean-pooled states, all three losses every step on one
   batch: Bradley-Terry on sibling pairs (optionally weighted by certainty), listwise softmax plus
   balanced BCE on relevance sets (the real reply first), cross-entropy on real vs machine replies.
   The recipes run side by side on the one GPU; each logs every head's loss curve and validation figures.
3. Every held-out pair of the kit is scored by every recipe; OUT gets the adapters and heads (fp16),
   the scores, the curves and the held-out machine replies, to be evaluated on CPU (`replyrank.evaluate`).

The script imports nothing of replyrank but its text normalisation (so scored text reads as the
bundle reads it), and that without the runtime's package init, which needs onnxruntime.
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
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"dialogrpt": (("dialogrpt",), False), "shp": (("dialogrpt", "shp"), False), "shp-weighted": (("dialogrpt", "shp"), True)}
HEADS = ("realism", "relevance", "upvotes")
MAX_LENGTH = 128
PEAK_LR = 3e-4  # the shipped upvote head's LoRA learning rate
DEVICE = os.environ.get("JUDGES_DEVICE", "cuda")  # "cpu" runs the same steps in the tests, slowly


def normalizer():
    """DialogRPT's `normalize_text` from runtime/filters.py, imported without running the runtime's package init."""
    package = types.ModuleType("replyrank")
    package.__path__ = [str(ROOT / "runtime")]
    sys.modules.setdefault("replyrank", package)
    from replyrank.filters import normalize_text

    return normalize_text


def read_jsonl(path: Path) -> list:
    with lzma.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def write_jsonl(path: Path, rows: list) -> None:
    with lzma.open(path, "wt", encoding="utf-8") as out:
        out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# --- machine replies -----------------------------------------------------------------------


def load_generator(path: str):
    """(model in bf16 on the GPU, tokenizer) from a GGUF file (dequantized) or a model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location, extra = (str(Path(path).parent), {"gguf_file": Path(path).name}) if path.endswith(".gguf") else (path, {})
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **extra)
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def prompt_for(source: dict, comment: str, tokenizer, bundle_template: str | None) -> str:
    comment = comment[:600]
    if source["prompt"] == "chat" and tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": comment}], add_generation_prompt=True, tokenize=False)
    if source["prompt"] == "bundle" and bundle_template:
        return bundle_template.replace("{comment}", comment)
    return f"{comment}\n\nReply:"


def generate(model, tokenizer, prompts: list[str], source: dict, deadline: float, batch: int = 768, max_new_tokens: int = 64) -> list[str | None]:
    """One reply per prompt (None for the batches past `deadline`; the first batch always runs), sampled with the
    source's settings, cut at its turn's end or a blank line. Batches run shortest prompt first."""
    import torch

    stops = [i for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")}
             if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str | None] = [None] * len(prompts)
    for start in range(0, len(order), batch):
        if start and time.time() > deadline:
            break
        rows = order[start : start + batch]
        inputs = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], do_sample=True, temperature=source["temperature"], top_k=source["top_k"],  # 0: no top-k
                                 top_p=source["top_p"], max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
        for i, ids in zip(rows, out[:, inputs["input_ids"].shape[1] :]):
            replies[i] = tokenizer.decode(ids, skip_special_tokens=True).split("\n\n")[0].strip()
    return replies


def machine_replies(kit: Path, generator: str, deadline: float, normalize) -> list[dict]:
    """The realism comments' machine replies: each training comment gets one source in turn, each held-out comment every source."""
    import copy

    import torch
    from peft import PeftModel

    manifest = json.loads((kit / "manifest.json").read_text())
    texts = read_jsonl(kit / "texts.jsonl.xz")
    prompts = read_jsonl(kit / "realism_prompts.jsonl.xz")
    base, tokenizer = load_generator(generator)
    sources = manifest["sources"] + manifest["held_out_sources"]
    rows: list[dict] = []
    for number, source in enumerate(sources):
        held_out = source in manifest["held_out_sources"]
        chosen = [(i, p) for i, p in enumerate(prompts) if p[2] == "eval" or (not held_out and i % len(manifest["sources"]) == number)]
        model = copy.deepcopy(base)
        template = None
        if source["adapter"]:
            folder = ROOT / source["adapter"]
            model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
            template = json.loads((folder / "replyrank_generator.json").read_text())["prompt_template"]
        model = model.to(DEVICE, torch.bfloat16 if DEVICE == "cuda" else torch.float32).eval()
        started = time.time()
        share = (deadline - time.time()) / (len(sources) - number)  # what is left, shared by the sources still to come
        replies = generate(model, tokenizer, [prompt_for(source, texts[p[0]], tokenizer, template) for _, p in chosen], source, time.time() + share)
        made = [(p, r) for (_, p), r in zip(chosen, replies) if r is not None and normalize(r)]
        rows += [{"parent": p[0], "split": p[2], "source": source["name"], "held_out": held_out, "reply": normalize(r)} for p, r in made]
        print(f"{source['name']}: {len(made)} of {len(chosen)} replies in {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


# --- the judge ---------------------------------------------------------------------------------


def build_judge(base: str, lora_rank: int | None = 32):
    """MiniLM with a LoRA adapter and three heads over mean-pooled states: realism (2 logits: machine, human),
    relevance (1 logit), upvotes (1 logit)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    class Judge(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder
            hidden = encoder.config.hidden_size
            self.dropout = torch.nn.Dropout(0.1)
            self.realism = torch.nn.Linear(hidden, 2)
            self.relevance = torch.nn.Linear(hidden, 1)
            self.upvotes = torch.nn.Linear(hidden, 1)

        def forward(self, **inputs):
            hidden = self.encoder(**inputs).last_hidden_state
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = self.dropout((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
            return self.realism(pooled), self.relevance(pooled)[:, 0], self.upvotes(pooled)[:, 0]

    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base, dtype=torch.float32)
    if lora_rank:
        names = {name.rsplit(".", 1)[-1] for name, _ in encoder.named_modules()}
        targets = sorted(names & {"query", "key", "value", "dense"})
        encoder = get_peft_model(encoder, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=0.05, target_modules=targets))
    return Judge(encoder), tokenizer


def load_judge(folder: str | Path, base: str):
    """(model, tokenizer) of a saved judge (`save`): the base encoder with its adapter merged in, and the three heads, in fp32."""
    from peft import PeftModel
    from safetensors.torch import load_file

    model, tokenizer = build_judge(base, lora_rank=None)
    model.encoder = PeftModel.from_pretrained(model.encoder, str(Path(folder) / "adapter")).merge_and_unload().float()
    tensors = load_file(str(Path(folder) / "heads.safetensors"))
    for head in HEADS:
        getattr(model, head).load_state_dict({n.split(".", 1)[1]: t.float() for n, t in tensors.items() if n.startswith(head + ".")})
    return model.eval(), tokenizer


@dataclass
class Data:
    """One recipe's training rows, texts by kit index: upvotes (parent, better, worse, weight), relevance
    (parent, real, 3 others), realism (parent, reply, label 1 human / 0 machine)."""

    texts: list[str]
    upvotes: dict[str, list[tuple[int, int, int, float]]]
    relevance: dict[str, list[list[int]]]
    realism: dict[str, list[tuple[int, str, int]]]


def load_data(kit: Path, machine: list[dict], protocols: tuple[str, ...], weighted: bool) -> Data:
    texts = read_jsonl(kit / "texts.jsonl.xz")
    upvotes: dict[str, list] = {"train": [], "valid": []}
    for parent, better, worse, protocol, weight, split in read_jsonl(kit / "upvote_pairs.jsonl.xz"):
        if protocol in protocols:
            upvotes[split].append((parent, better, worse, weight if weighted else 1.0))
    relevance: dict[str, list] = {"train": [], "valid": []}
    for row in read_jsonl(kit / "relevance_sets.jsonl.xz"):
        relevance[row[-1]].append(row[:-1])
    realism: dict[str, list] = {"train": [], "valid": []}
    real = {split: [(p, texts[r], 1) for p, r, s in read_jsonl(kit / "realism_prompts.jsonl.xz") if s == split] for split in realism}
    for split in realism:
        fake = [(m["parent"], m["reply"], 0) for m in machine if m["split"] == split and not m["held_out"]]
        count = min(len(real[split]), len(fake))  # balanced classes
        realism[split] = real[split][:count] + fake[:count]
    return Data(texts, upvotes, relevance, realism)


def encode(tokenizer, texts: list[str], pairs: list[tuple[int, str | int]]):
    """Token batch of (parent index, reply index or text) pairs, cut to MAX_LENGTH as the scorer cuts them."""
    replies = [texts[r] if isinstance(r, int) else r for _, r in pairs]
    batch = tokenizer([texts[p] for p, _ in pairs], replies, padding=True, truncation="longest_first", max_length=MAX_LENGTH, return_tensors="pt")
    return {k: v.to(DEVICE) for k, v in batch.items()}


def losses(model, tokenizer, data: Data, up: list, rel: list, real: list):
    """The three heads' losses on one batch, in one forward pass over every text."""
    import torch
    import torch.nn.functional as F

    pairs = [(p, b) for p, b, _, _ in up] + [(p, w) for p, _, w, _ in up]
    pairs += [(group[0], r) for group in rel for r in group[1:]]
    pairs += [(p, r) for p, r, _ in real]
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        realism, relevance, upvotes = model(**encode(tokenizer, data.texts, pairs))
    n_up, n_rel = len(up), len(rel) * 4
    weights = torch.tensor([w for *_, w in up], device=DEVICE)
    margin = upvotes[:n_up].float() - upvotes[n_up : 2 * n_up].float()
    upvote_loss = (weights * -F.logsigmoid(margin)).sum() / weights.sum()
    groups = relevance[2 * n_up : 2 * n_up + n_rel].float().view(len(rel), 4)
    labels = torch.zeros_like(groups)
    labels[:, 0] = 1
    relevance_loss = F.cross_entropy(groups, torch.zeros(len(rel), dtype=torch.long, device=DEVICE)) + F.binary_cross_entropy_with_logits(
        groups, labels, pos_weight=torch.tensor(3.0, device=DEVICE))
    realism_loss = F.cross_entropy(realism[2 * n_up + n_rel :].float(), torch.tensor([y for *_, y in real], device=DEVICE))
    return {"upvotes": upvote_loss, "relevance": relevance_loss, "realism": realism_loss}


def score(model, tokenizer, texts: list[str], pairs: list[tuple[int, str | int]], batch: int = 512) -> np.ndarray:
    """(P(human), relevance logit, upvote logit) per pair."""
    import torch

    model.eval()
    rows = []
    with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
        for start in range(0, len(pairs), batch):
            realism, relevance, upvotes = model(**encode(tokenizer, texts, pairs[start : start + batch]))
            rows.append(torch.stack([realism.float().softmax(-1)[:, 1], relevance.float(), upvotes.float()], 1).cpu().numpy())
    model.train()
    return np.concatenate(rows) if rows else np.zeros((0, 3))


def validate(model, tokenizer, data: Data) -> dict:
    """Validation threads of the training subreddits: upvote pairwise accuracy, relevance hits@1 among 4, realism AUC."""
    up = data.upvotes["valid"][:3000]
    s = score(model, tokenizer, data.texts, [(p, b) for p, b, _, _ in up] + [(p, w) for p, _, w, _ in up])
    rel = data.relevance["valid"][:2000]
    r = score(model, tokenizer, data.texts, [(g[0], x) for g in rel for x in g[1:]])[:, 1].reshape(len(rel), 4)
    real = data.realism["valid"]
    m = score(model, tokenizer, data.texts, [(p, x) for p, x, _ in real])[:, 0]
    labels = np.array([y for *_, y in real])
    return {"upvotes_pairwise": float(np.mean(s[: len(up), 2] > s[len(up) :, 2])), "relevance_hits_at_1_of_4": float(np.mean(r.argmax(1) == 0)),
            "realism_auc": auc(labels, m)}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney ROC-AUC (ties half), for the curves; the reported figures come from replyrank.metrics on CPU."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.sort(neg)
    return float((np.searchsorted(order, pos, "left") + np.searchsorted(order, pos, "right")).sum() / (2 * len(pos) * len(neg)))


def train(data: Data, base: str, start: float, deadline: float, seed: int = 0, log_every: int = 25, checks: int = 6, min_steps: int = 0) -> tuple:
    """Train every head until `deadline` (and for `min_steps` at least); returns (model, tokenizer, curves, validation history, steps run).

    The learning rate follows the clock, not a step count (5% warm-up, then linear to 0 at the deadline),
    so a run that shares the GPU with others still ends its schedule, however many steps that turns out to be.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, tokenizer = build_judge(base)
    model.to(DEVICE).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=PEAK_LR, weight_decay=0.01)
    sizes = {"upvotes": 64, "relevance": 24, "realism": 48}
    pools = {"upvotes": data.upvotes["train"], "relevance": data.relevance["train"], "realism": data.realism["train"]}
    empty = [name for name, pool in pools.items() if not pool]
    if empty:
        raise ValueError(f"no training rows for the {', '.join(empty)} head(s): nothing to draw batches from")
    orders = {name: iter(()) for name in pools}
    curves: dict[str, list] = {name: [] for name in HEADS}
    window: dict[str, list[float]] = {name: [] for name in HEADS}
    history = []
    budget = deadline - start
    interval = budget / checks if budget > 0 else math.inf  # a run already past its deadline checks once, at the end
    next_check = start + interval

    def draw(name: str) -> list:
        chosen = []
        while len(chosen) < sizes[name]:
            try:
                chosen.append(pools[name][next(orders[name])])
            except StopIteration:  # a new epoch of this head's data, in a new order
                orders[name] = iter(rng.permutation(len(pools[name])))
        return chosen

    step = 0
    while (now := time.time()) < deadline or step < min_steps:
        done = (now - start) / budget if budget > 0 else 1.0
        for group in optimizer.param_groups:
            group["lr"] = PEAK_LR * max(0.0, min(done / 0.05, (1 - done) / 0.95))
        parts = losses(model, tokenizer, data, draw("upvotes"), draw("relevance"), draw("realism"))
        sum(parts.values()).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        for name, value in parts.items():
            window[name].append(float(value.detach()))
        if step % log_every == 0:
            for name in HEADS:
                curves[name].append([step, float(np.mean(window[name]))])
                window[name].clear()
        if time.time() >= next_check:
            next_check += interval
            history.append({"step": step, "seconds": round(time.time() - start), **validate(model, tokenizer, data)})
            print(f"step {step}: {history[-1]} losses {[round(curves[h][-1][1], 4) for h in HEADS if curves[h]]}", file=sys.stderr, flush=True)
    history.append({"step": step, "seconds": round(time.time() - start), **validate(model, tokenizer, data)})
    model.eval()
    return model, tokenizer, curves, history, step


def save(model, out: Path) -> None:
    """The adapter (fp16) and the three heads: what rebuilds the judge over the same base."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(str(out / "adapter"))
    adapter = out / "adapter" / "adapter_model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(adapter)).items()}, str(adapter))
    save_file({f"{head}.{name}": t.detach().float().cpu().contiguous() for head in HEADS for name, t in getattr(model, head).state_dict().items()},
              str(out / "heads.safetensors"))


def run_variant(args, name: str) -> None:
    """One upvote recipe: train, save, score every held-out pair and the held-out realism replies."""
    protocols, weighted = VARIANTS[name]
    machine = read_jsonl(Path(args.work) / "machine.jsonl.xz")
    kit = Path(args.kit)
    data = load_data(kit, machine, protocols, weighted)
    counts = {k: {s: len(v) for s, v in getattr(data, k).items()} for k in ("upvotes", "relevance", "realism")}
    print(f"{name}: {counts}", file=sys.stderr, flush=True)
    model, tokenizer, curves, history, steps = train(data, args.base, time.time(), args.deadline, min_steps=args.min_steps)
    save(model, Path(args.work) / name)
    eval_pairs = read_jsonl(kit / "eval_pairs.jsonl.xz")
    texts = data.texts + [p for p, _ in eval_pairs]
    start = len(data.texts)
    held = score(model, tokenizer, texts, [(start + i, r) for i, (_, r) in enumerate(eval_pairs)])
    prompts = read_jsonl(kit / "realism_prompts.jsonl.xz")
    real = [(p, r) for p, r, s in prompts if s == "eval"]
    fake = [(m["parent"], m["reply"]) for m in machine if m["split"] == "eval"]
    realism = score(model, tokenizer, data.texts, real + fake)[:, 0]
    np.savez(Path(args.work) / f"{name}.npz", eval_pairs=held.astype(np.float32), realism=realism.astype(np.float32))
    (Path(args.work) / f"{name}.json").write_text(json.dumps({"variant": name, "protocols": protocols, "weighted": weighted, "counts": counts,
                                                              "steps": steps, "curves": curves, "validation": history}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", required=True)
    parser.add_argument("--base", required=True, help="MiniLM folder (all-MiniLM-L6-v2)")
    parser.add_argument("--generator", required=True, help="SmolLM2-135M-Instruct: GGUF file or model folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/judges-work")
    parser.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole run")
    parser.add_argument("--min-steps", type=int, default=0, help="steps each recipe takes even past its deadline (a slow machine's check)")
    parser.add_argument("--variant", default=None, help="(internal) train one recipe")
    parser.add_argument("--deadline", type=float, default=None, help="(internal)")
    args = parser.parse_args()
    if args.variant:
        run_variant(args, args.variant)
        return
    start = time.time()
    end = start + args.minutes * 60
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_replies(Path(args.kit), args.generator, start + (end - start) * 0.35, normalizer())
    write_jsonl(work / "machine.jsonl.xz", machine)
    train_deadline = end - 75  # scoring, saving and packing take the rest
    runs = [subprocess.Popen([sys.executable, __file__, "--kit", args.kit, "--base", args.base, "--generator", args.generator, "--out", args.out,
                              "--work", args.work, "--variant", name, "--deadline", str(train_deadline), "--min-steps", str(args.min_steps)])
            for name in VARIANTS]
    codes = [run.wait() for run in runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "cf", str(out / "judges.tar"), "-C", str(work)] + [p.name for p in work.iterdir() if p.name != "machine.jsonl.xz"], check=False)
    write_jsonl(out / "machine_eval.jsonl.xz", [m for m in machine if m["split"] == "eval"])
    summary = {"exit_codes": dict(zip(VARIANTS, codes)), "seconds": time.time() - start,
               "machine_replies": {s: sum(m["source"] == s for m in machine) for s in {m["source"] for m in machine}}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    main()
