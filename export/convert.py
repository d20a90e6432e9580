"""Hugging Face checkpoints (hub id, local folder or GGUF file) → fp32 ONNX parts, via optimum's exporter.

The generator is exported with its KV cache (`text-generation-with-past`): one graph that takes
`past_key_values.*` of length 0 for the prefill and of any length for the decode steps.
Scorers are exported as `text-classification`. Each part folder keeps optimum's layout
(`model.onnx`, `config.json`, `tokenizer.json`), so optimum's ORTModel classes load it too.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from replyrank.errors import ReplyrankError

# The file a trained generator keeps its prompt template in (written by `replyrank train generator`).
GENERATOR_SPEC = "replyrank_generator.json"


class ExportError(ReplyrankError):
    """A model that cannot become a bundle part, with the reason and the fix."""


@dataclass
class Checkpoint:
    """A model resolved to a local Hugging Face folder that optimum can export."""

    folder: Path
    source: str


def _local_or_hub(source: str) -> tuple[str, dict]:
    """Split `path/to/model.gguf` into (folder, {'gguf_file': name}); other sources pass through."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ExportError(f"GGUF file {source} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not path.is_dir():
        raise ExportError(f"{source} is a file; give a Hugging Face model folder, a .gguf file or a hub id")
    return (str(path) if path.is_dir() else source), {}


def _fix_gguf_eos(tokenizer) -> None:
    """transformers reads SmolLM2's GGUF with eos `<|im_start|>`; a chat model's turn ends at `<|im_end|>`."""
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab and tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"


def materialize_causal_lm(source: str, work_dir: Path) -> Checkpoint:
    """Load a causal LM from a hub id, folder or GGUF and save it as a plain safetensors folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location, extra = _local_or_hub(source)
    try:
        config = AutoConfig.from_pretrained(location, **extra)
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot load generator {source!r}: {str(error).splitlines()[0]}") from None
    architectures = config.architectures or []
    causal = not architectures or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    try:
        if not causal or getattr(config, "is_encoder_decoder", False):
            raise ValueError
        model = AutoModelForCausalLM.from_pretrained(location, dtype="float32", **extra)
    except ValueError:
        raise ExportError(
            f"generator {source!r} is a {config.model_type} model, not a causal LM; give a GPT-2 or Llama-family checkpoint"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    if extra:
        _fix_gguf_eos(tokenizer)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
    folder = work_dir / "generator-hf"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    spec = Path(location) / GENERATOR_SPEC
    if spec.is_file():
        shutil.copy(spec, folder / GENERATOR_SPEC)
    return Checkpoint(folder, source)


def check_scorer(source: str, labels: int, role: str) -> Checkpoint:
    """A sequence classifier with `labels` outputs, as a local folder."""
    from transformers import AutoConfig

    location, extra = _local_or_hub(source)
    if extra:
        raise ExportError(f"{role} {source!r}: GGUF holds causal LMs; give a BERT-family classifier folder or hub id")
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise ExportError(f"cannot load {role} {source!r}: {str(error).splitlines()[0]}") from None
    architectures = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise ExportError(
            f"{role} {source!r} is {architectures or config.model_type}, not a sequence classifier; "
            f"train one with `replyrank train {'discriminator' if role == 'discriminator' else 'upvotes'}`"
        )
    if config.num_labels != labels:
        raise ExportError(f"{role} {source!r} has {config.num_labels} labels; a {role} needs {labels}")
    return Checkpoint(Path(location), source)


def export_onnx(checkpoint: Checkpoint, out_dir: Path, task: str) -> Path:
    """Run optimum's ONNX exporter; returns the part folder holding `model.onnx`."""
    from optimum.exporters.onnx import main_export

    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the CLI's data
        main_export(str(checkpoint.folder), output=out_dir, task=task, do_validation=False, device="cpu")
    if not (out_dir / "tokenizer.json").is_file():
        raise ExportError(f"{checkpoint.source!r} has no fast tokenizer (tokenizer.json); the runtime needs one")
    return out_dir


def generator_spec(checkpoint: Checkpoint, prompt_template: str | None) -> dict:
    """The manifest entry of the generator: prompt template, EOS ids, context length, BOS."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(checkpoint.folder)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.folder)
    stored = checkpoint.folder / GENERATOR_SPEC
    spec = json.loads(stored.read_text()) if stored.is_file() else {}
    template = prompt_template or spec.get("prompt_template")
    if template is None and tokenizer.chat_template:
        messages = [{"role": "user", "content": "{comment}"}]
        template = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    template = template or "{comment}\n"
    if template.count("{comment}") != 1:
        raise ExportError("the prompt template must contain {comment} exactly once")
    eos = spec.get("eos_token_ids") or config.eos_token_id
    eos_ids = sorted({int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None})
    if not eos_ids:
        raise ExportError(f"generator {checkpoint.source!r} has no eos_token_id; set one in its config")
    bos = tokenizer.bos_token_id
    # a chat template already opens with its own markup; add BOS only where the tokenizer would
    adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos] and not template.startswith(tokenizer.bos_token)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024)
    return {
        "kind": "causal-lm",
        "architecture": config.model_type,
        "prompt_template": template,
        "eos_token_ids": eos_ids,
        "bos_token_id": bos if adds_bos else None,
        "context_length": int(context),
        "vocab_size": int(config.vocab_size),
    }
