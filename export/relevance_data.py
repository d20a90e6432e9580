"""The relevance judge's data, on CPU: what `export/train_relevance.py` trains and is judged on.

`prepare` reads the college dumps: every training-thread (comment, reply) pair of the four training
subreddits, validation sets of 10 from their validation threads, and the held-out subreddits' sets
as `replyrank eval` draws them, all normalised as the runtime reads them; texts by index.
`pack` cuts that and the base encoder to what the GPU machine takes (a 64 MiB tree).

    python -m replyrank.export.relevance_data prepare DATA
    python -m replyrank.export.relevance_data pack --data DATA --base MINILM --out PACK --train-pairs 95000
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

import numpy as np

from .train_relevance import MAX_LENGTH, read_texts

ROOT = Path(__file__).resolve().parents[1]
COLLEGE = ROOT.parent / "shared" / "data" / "reddit" / "college"
TRAIN_SUBREDDITS = ("ApplyingToCollege", "College", "CollegeMajors", "CollegeAdvice")
HELDOUT_SUBREDDITS = ("GradSchool", "CollegeRant")


def files(subreddits: tuple[str, ...]) -> list[str]:
    return [str(COLLEGE / f"{kind}_{name}.zst") for name in subreddits for kind in ("RS", "RC")]


def heldout_sets() -> list:
    """The held-out subreddits' relevance sets exactly as `replyrank eval` draws them (1,000 sets of 10)."""
    from replyrank.dumps import load_pairs
    from replyrank.evaluate import relevance_sets

    return relevance_sets(load_pairs(files(HELDOUT_SUBREDDITS)), 1000)


def prepare(out: Path, valid_sets: int = 2000) -> dict:
    """Every training-thread (comment, reply) pair of the training subreddits, validation sets of 10 from their
    validation threads, and the held-out sets, normalised as the runtime reads them; texts by index."""
    from replyrank.evaluate import relevance_sets, relevance_texts
    from replyrank.export.judges import TextTable, load_split, write_jsonl
    from replyrank.filters import normalize_text

    split = load_split(files(TRAIN_SUBREDDITS))
    table = TextTable()
    train = split["train"]
    subreddits = sorted({p.subreddit for p in train})
    arrays = {"train_parent": np.array([table(p.parent) for p in train], np.int32),
              "train_reply": np.array([table(p.reply) for p in train], np.int32),
              "train_subreddit": np.array([subreddits.index(p.subreddit) for p in train], np.int16)}
    valid = relevance_sets(split["valid"], valid_sets)
    arrays["valid_sets"] = np.array([[table(p), table(r)] for p, r in relevance_texts(valid)], np.int32).reshape(len(valid), -1, 2)
    held = heldout_sets()
    pairs = [(normalize_text(p), normalize_text(r)) for p, r in relevance_texts(held)]
    arrays["heldout_sets"] = np.array([[table(p), table(r)] for p, r in pairs], np.int32).reshape(len(held), -1, 2)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"texts": write_jsonl(out / "texts.jsonl.xz", table.texts()), "train_pairs": len(train), "subreddits": subreddits,
                "valid_threads_pairs": len(split["valid"]), "valid_sets": len(valid), "heldout_sets": len(held),
                "train_files": [Path(f).name for f in files(TRAIN_SUBREDDITS)], "heldout_files": [Path(f).name for f in files(HELDOUT_SUBREDDITS)]}
    np.savez_compressed(out / "data.npz", **arrays)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def pack(data: Path, base: Path, out: Path, train_pairs: int, seed: int = 0) -> dict:
    """A copy of DATA with `train_pairs` training pairs drawn at random (all validation and held-out sets), and the
    base in fp16 without the word-embedding rows that none of its texts uses: the GPU machine takes a 64 MiB tree.
    `train` puts the rows back (`unpacked_base`), as zeros that no token of these texts reads."""
    import shutil

    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    arrays = dict(np.load(data / "data.npz"))
    chosen = np.sort(np.random.default_rng(seed).choice(len(arrays["train_parent"]), min(train_pairs, len(arrays["train_parent"])), replace=False))
    for key in ("train_parent", "train_reply", "train_subreddit"):
        arrays[key] = arrays[key][chosen]
    texts = read_texts(data / "texts.jsonl.xz")
    kept = np.unique(np.concatenate([arrays[k].ravel() for k in ("train_parent", "train_reply", "valid_sets", "heldout_sets")]))
    for key in ("train_parent", "train_reply", "valid_sets", "heldout_sets"):
        arrays[key] = np.searchsorted(kept, arrays[key]).astype(np.int32)
    out.mkdir(parents=True, exist_ok=True)
    with lzma.open(out / "texts.jsonl.xz", "wt", encoding="utf-8") as lines:
        lines.writelines(json.dumps(texts[i], ensure_ascii=False) + "\n" for i in kept)
    np.savez_compressed(out / "data.npz", **arrays)
    manifest = {**json.loads((data / "manifest.json").read_text()), "texts": len(kept), "train_pairs_of": len(chosen)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_LENGTH)
    used = np.zeros(tokenizer.get_vocab_size(), bool)
    for start in range(0, len(kept), 4096):
        for encoding in tokenizer.encode_batch([texts[i] for i in kept[start : start + 4096]]):
            used[encoding.ids] = True
    weights = {name: tensor.astype(np.float16) for name, tensor in load_file(str(base / "model.safetensors")).items()}
    rows = np.flatnonzero(used).astype(np.int32)
    weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"][rows]
    (out / "base").mkdir(exist_ok=True)
    save_file({**weights, "used_token_ids": rows}, str(out / "base" / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(base / name, out / "base" / name)
    return {"train_pairs": len(chosen), "texts": len(kept), "token_rows": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="the dumps -> DATA")
    prep.add_argument("data")
    packer = commands.add_parser("pack", help="DATA and the base, cut to what travels to the GPU machine")
    packer.add_argument("--data", required=True)
    packer.add_argument("--base", required=True, help="all-MiniLM-L6-v2 folder")
    packer.add_argument("--out", required=True)
    packer.add_argument("--train-pairs", type=int, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        print(json.dumps(prepare(Path(args.data)), indent=2))
    else:
        print(json.dumps(pack(Path(args.data), Path(args.base), Path(args.out), args.train_pairs), indent=2))


if __name__ == "__main__":
    main()
