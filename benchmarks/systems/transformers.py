"""PyTorch fp32 through transformers: `generate(num_return_sequences=N)` and two sequence classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .common import Generated, System, job_options, scorer_max_length, source_dir

PACKAGES = ["torch", "transformers", "tokenizers"]


def torch_scorer(folder: Path | None, bundle_part: Path, comment: str, max_length: int) -> tuple[Callable[[list[str]], Any], str]:
    """A sequence classifier on PyTorch: the trained source folder, or (timing only) its architecture."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerFast

    if folder is not None and folder.is_dir():
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        how = f"{folder}"
    else:
        # The default bundle trains its scorers in a temporary folder, gone after the export.
        # Latency does not depend on the weights' values: same architecture, random weights.
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(bundle_part)).eval()
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(bundle_part / "tokenizer.json"))
        tokenizer.pad_token = tokenizer.pad_token or tokenizer.convert_ids_to_tokens(model.config.pad_token_id or 0)
        how = f"{bundle_part}/config.json with random weights (source folder missing: timing only)"

    def score(texts: list[str]) -> Any:
        batch = tokenizer([comment] * len(texts), texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).logits.numpy()

    return score, how


def hf_generate(
    model: Any, prompt_ids: list[int], pad_id: int, decode: Callable[[list[int]], str], args: dict[str, Any]
) -> Callable[[int, int, int], Generated]:
    """`generate(num_return_sequences=N, ...)` for any transformers-API causal LM (PyTorch or optimum's ORTModel)."""
    import torch

    prompt = torch.tensor([prompt_ids], dtype=torch.long)
    mask = torch.ones_like(prompt)
    sampling = job_options(args)

    def generate(n: int, t: int, seed: int) -> Generated:
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                prompt, attention_mask=mask, do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, repetition_penalty=sampling.repetition_penalty, num_return_sequences=n, min_new_tokens=t, max_new_tokens=t, pad_token_id=pad_id,
            )
        new = out[:, prompt.shape[1]:].tolist()
        return Generated([decode(ids) for ids in new], [len(ids) for ids in new])

    return generate


def load(name: str, args: dict[str, Any]) -> System:
    """PyTorch fp32: AutoModelForCausalLM (from a folder or a GGUF) and two AutoModelForSequenceClassification."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args["threads"])
    torch.set_num_interop_threads(1)
    from replyrank.bundle import DISCRIMINATOR, GENERATOR, UPVOTES
    from replyrank.export.convert import split_gguf

    location, extra = split_gguf(args["sources"][GENERATOR])
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **extra).eval()
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else args["eos_ids"][0]
    bundle = Path(args["bundle"])
    max_length = scorer_max_length(args)
    disc, disc_how = torch_scorer(source_dir(args, DISCRIMINATOR), bundle / DISCRIMINATOR, args["comment"], max_length)
    upv, upv_how = torch_scorer(source_dir(args, UPVOTES), bundle / UPVOTES, args["comment"], max_length)
    notes = [f"generator: {args['sources']['generator']}" + (" (GGUF dequantized to fp32 at load)" if extra else ""),
             f"discriminator: {disc_how}", f"upvotes: {upv_how}", "prefill at batch N (num_return_sequences expands the prompt)"]
    return System(hf_generate(model, args["prompt_ids"], pad, decode, args), disc, upv, notes=notes)
