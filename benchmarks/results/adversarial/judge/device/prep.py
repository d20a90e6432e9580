"""On the device: the base generator folder (GGUF dequantized, the default bundle's PROMPT), MiniLM in fp32, the upvote scorer."""
import json, shutil, sys
from pathlib import Path
sys.path.insert(0, "/root/rr/pkg")
import torch
from safetensors.torch import load_file, save_file
from replyrank.export.convert import GENERATOR_SPEC, load_causal_lm, save_tokenizer
from replyrank.export import rankers
from transformers import AutoTokenizer

R = Path("/root/rr")
base = R / "base"
if not (base / "config.json").is_file():
    model, tok = load_causal_lm(str(R / "smollm2.gguf"))
    model.save_pretrained(base)
    save_tokenizer(tok, base)
    shutil.copy(".device/run/generator_spec.json", base / GENERATOR_SPEC)
    again = AutoTokenizer.from_pretrained(base)
    text = "Hello there!  I'm fine, thanks \n\n ok <|im_end|>"
    assert again(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids, "saved tokenizer differs"
    print("base ok", type(again).__name__, again.eos_token_id, flush=True)
m32 = R / "minilm"
if not (m32 / "model.safetensors").is_file():
    shutil.copytree(R / "minilm16", m32, dirs_exist_ok=True)
    w = load_file(R / "minilm16" / "model.safetensors")
    save_file({k: v.float() if v.is_floating_point() else v for k, v in w.items()}, m32 / "model.safetensors", metadata={"format": "pt"})
up = R / "upvotes"
if not up.is_dir():
    model, tok, info = rankers.load(rankers.SHIPPED_UPVOTES, base=str(m32))
    model.float()
    rankers.save(model, tok, up, info)
print("prep done", flush=True)
