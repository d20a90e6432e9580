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
from typing import Any

from replyrank.bundle import GENERATOR, GeneratorSpec
from replyrank.errors import ReplyrankError
from replyrank.generate import GenerationOptions

# The file a trained generator keeps its prompt template in (written by `replyrank train generator`).
GENERATOR_SPEC = "replyrank_generator.json"
# The file a trained regressor keeps its target scaling in (written by `replyrank train upvotes`).
SCORER_SPEC = "replyrank_scorer.json"
# The prompt of a model with neither a stored template nor a chat template (training and export alike).
FALLBACK_TEMPLATE = "Comment: {comment}\nReply:"
# A part folder's files beside its graph, as optimum's exporter writes them: what the runtime and optimum read.
PART_FILES = ("tokenizer.json", "config.json", "generation_config.json")
# A graph's weights: external data beside `model.onnx`, which ONNX Runtime memory-maps at load.
WEIGHTS_FILE = "model.onnx.data"


def copy_part_files(source: Path, part_dir: Path) -> None:
    """The PART_FILES that `source` holds, copied into `part_dir`."""
    for name in PART_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, part_dir / name)


class ExportError(ReplyrankError):
    """A model that cannot become a bundle part, with the reason and the fix."""


@dataclass
class Checkpoint:
    """A model resolved to a local Hugging Face folder that optimum can export."""

    folder: Path
    source: str


def split_gguf(source: str) -> tuple[str, dict[str, str]]:
    """Split `path/to/model.gguf` into (folder, {'gguf_file': name}) for transformers; other sources pass through."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ExportError(f"GGUF file {source} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists() and not path.is_dir():
        raise ExportError(f"{source} is a file; give a Hugging Face model folder, a .gguf file or a hub id")
    return (str(path) if path.is_dir() else source), {}


def default_template(tokenizer: Any) -> str:
    """The prompt of a model that stores none: its chat template with the comment as the user's turn, else FALLBACK_TEMPLATE."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": "{comment}"}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return FALLBACK_TEMPLATE


def stored_template(source: str) -> str | None:
    """The prompt template a generator was trained with, where its folder keeps one (GENERATOR_SPEC)."""
    stored = Path(split_gguf(source)[0]) / GENERATOR_SPEC
    return json.loads(stored.read_text()).get("prompt_template") if stored.is_file() else None


def load_causal_lm(source: str) -> tuple[Any, Any]:
    """(model in fp32, tokenizer) from a hub id, folder or GGUF file: the one loader of export and training.

    A GGUF is dequantized to fp32 at load, with two fixes: transformers reads SmolLM2's GGUF with
    eos `<|im_start|>`, while a chat model's turn ends at `<|im_end|>`; and newer transformers still
    mark the dequantized model as GGUF-quantized and refuse to save it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location, extra = split_gguf(source)
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
        if "<|im_end|>" in tokenizer.get_vocab() and tokenizer.eos_token != "<|im_end|>":
            tokenizer.eos_token = "<|im_end|>"
        model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.__dict__.pop("quantization_config", None)
    return model, tokenizer


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """Save a generator's tokenizer so that transformers 4 and 5 both load it as it was.

    A tokenizer read from a GGUF saves as a `LlamaTokenizer`, which transformers 5 rebuilds with a
    SentencePiece-style pre-tokenizer; a byte-level BPE (SmolLM2's, GPT-2's) is recorded as the
    GPT2Tokenizer it is, as SmolLM2's own hub folder records it, which both load from tokenizer.json unchanged.
    """
    tokenizer.save_pretrained(folder)
    config_path, vocab_path = Path(folder) / "tokenizer_config.json", Path(folder) / "tokenizer.json"
    if not (config_path.is_file() and vocab_path.is_file()):
        return
    config = json.loads(config_path.read_text())
    pre = json.loads(vocab_path.read_text()).get("pre_tokenizer") or {}
    if str(config.get("tokenizer_class", "")).startswith("Llama") and pre.get("type") == "ByteLevel":
        config_path.write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}, indent=2, ensure_ascii=False))


def materialize_causal_lm(source: str, work_dir: Path) -> Checkpoint:
    """Load a causal LM from a hub id, folder or GGUF and save it as a plain safetensors folder."""
    model, tokenizer = load_causal_lm(source)
    folder = work_dir / "generator-hf"
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    spec = Path(split_gguf(source)[0]) / GENERATOR_SPEC
    if spec.is_file():
        shutil.copy(spec, folder / GENERATOR_SPEC)
    return Checkpoint(folder, source)


def check_scorer(source: str, labels: int, role: str) -> Checkpoint:
    """A sequence classifier with `labels` outputs, as a local folder."""
    from transformers import AutoConfig

    location, extra = split_gguf(source)
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


def generator_spec(checkpoint: Checkpoint, prompt_template: str | None, sampling: GenerationOptions) -> GeneratorSpec:
    """The generator's spec: prompt template, EOS ids, context length, BOS, and the deployment's sampling."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(checkpoint.folder)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint.folder)
    stored = checkpoint.folder / GENERATOR_SPEC
    trained = json.loads(stored.read_text()) if stored.is_file() else {}  # train_generator's: its prompt template and EOS
    template = prompt_template or trained.get("prompt_template") or default_template(tokenizer)
    if template.count("{comment}") != 1:
        raise ExportError("the prompt template must contain {comment} exactly once")
    eos = trained.get("eos_token_ids") or config.eos_token_id
    eos_ids = sorted({int(i) for i in (eos if isinstance(eos, list) else [eos]) if i is not None})
    if not eos_ids:
        raise ExportError(f"generator {checkpoint.source!r} has no eos_token_id; set one in its config")
    bos = tokenizer.bos_token_id
    # a chat template already opens with its own markup; add BOS only where the tokenizer would
    adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos] and not template.startswith(tokenizer.bos_token)
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 1024)
    return GeneratorSpec(
        path=GENERATOR,
        prompt_template=template,
        eos_token_ids=tuple(eos_ids),
        context_length=int(context),
        bos_token_id=bos if adds_bos else None,
        vocab_size=int(config.vocab_size),
        architecture=config.model_type,
        sampling=sampling,
    )
