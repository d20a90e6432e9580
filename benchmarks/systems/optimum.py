"""optimum's ORTModelForCausalLM on its own fp32 export, and ORTModelForSequenceClassification on the bundle's scorers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .common import System, cache_key, cached, hf_folder
from .transformers import hf_generate

PACKAGES = ["optimum", "optimum-onnx", "onnxruntime", "torch", "transformers"]


def prepare(args: dict[str, Any]) -> Path:
    from optimum.exporters.onnx import main_export

    hf = hf_folder(args)

    def export(out: Path) -> None:
        main_export(str(hf), output=out, task="text-generation-with-past", do_validation=False, device="cpu")

    return cached(Path(args["cache"]), f"optimum-{cache_key(str(hf))}", export)


def load(name: str, args: dict[str, Any]) -> System:
    """optimum's ORTModelForCausalLM (its own fp32 export) and ORTModelForSequenceClassification on the bundle's scorers."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    def session_options() -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = args["threads"]
        options.inter_op_num_threads = 1
        return options

    folder = Path(args["prepared"])
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=session_options(), provider="CPUExecutionProvider", use_cache=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else args["eos_ids"][0]
    scorers = []
    from replyrank.bundle import Bundle

    bundle = Bundle.read(args["bundle"], verify_hashes=False)
    for spec in bundle.scorers.values():
        part_dir = bundle.folder(spec)
        scorer = ORTModelForSequenceClassification.from_pretrained(
            part_dir, file_name="model.onnx", session_options=session_options(), provider="CPUExecutionProvider"
        )
        scorer_tokenizer = AutoTokenizer.from_pretrained(part_dir)
        scorers.append(ort_scorer(scorer, scorer_tokenizer, args["comment"], spec.max_length))
    notes = [
        f"generator: optimum main_export(text-generation-with-past) of the HF generator, fp32, cached in {folder}",
        "(optimum cannot run the bundle's fused onnxruntime-genai graph)",
        "scorers: the bundle's int8 ONNX scorer folders", "prefill at batch N (num_return_sequences expands the prompt)",
    ]
    return System(hf_generate(model, args["prompt_ids"], pad, decode, args), scorers[0], scorers[1], notes=notes)


def ort_scorer(model: Any, tokenizer: Any, comment: str, max_length: int) -> Callable[[list[str]], Any]:
    def score(texts: list[str]) -> Any:
        batch = tokenizer([comment] * len(texts), texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return model(**batch).logits

    return score
