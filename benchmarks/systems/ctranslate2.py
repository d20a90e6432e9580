"""CTranslate2's int8 Generator.generate_batch on N copies of the prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .common import Generated, KernelClock, StepBytes, System, cache_key, cached, decoder, hf_folder, job_options, pair_scorers

PACKAGES = ["ctranslate2", "onnxruntime", "tokenizers", "transformers"]


def prepare(args: dict[str, Any]) -> Path:
    import ctranslate2

    hf = hf_folder(args)

    def convert(out: Path) -> None:
        ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out), quantization="int8", force=True)
        shutil.copy(hf / "tokenizer.json", out / "tokenizer.json")
        # a tokenizer without an unknown token (tiny test ones) leaves nulls that Generator refuses to load
        config = json.loads((out / "config.json").read_text())
        fixed = {k: (config["eos_token"] if k.endswith("_token") else v) for k, v in config.items() if v is not None or k.endswith("_token")}
        (out / "config.json").write_text(json.dumps(fixed, indent=2))

    return cached(Path(args["cache"]), f"ct2-int8-{cache_key(str(hf))}", convert)


def load(name: str, args: dict[str, Any]) -> System:
    """CTranslate2 int8 Generator.generate_batch on N copies of the prompt; scorers on onnxruntime."""
    import ctranslate2
    from tokenizers import Tokenizer

    folder = Path(args["prepared"])
    generator = ctranslate2.Generator(str(folder), device="cpu", compute_type="int8", intra_threads=args["threads"], inter_threads=1)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt_tokens = [tokenizer.id_to_token(i) for i in args["prompt_ids"]]
    decode = decoder(folder)

    sampling = job_options(args)
    clock = KernelClock()
    generate_batch = clock.wrap(generator.generate_batch)

    def generate(n: int, t: int, seed: int) -> Generated:
        ctranslate2.set_random_seed(seed)
        results = generate_batch(
            [prompt_tokens] * n, sampling_topk=sampling.top_k, sampling_temperature=sampling.temperature, sampling_topp=sampling.top_p,
            repetition_penalty=sampling.repetition_penalty, min_length=t, max_length=t, include_prompt_in_result=False,
        )
        new = [r.sequences_ids[0] for r in results]
        return Generated([decode(ids) for ids in new], [len(ids) for ids in new])

    disc, upv = pair_scorers(args, args["threads"], clock)
    config = json.loads((hf_folder(args) / "config.json").read_text())
    # GPT-2's config names them n_embd, n_head, n_layer
    width, heads = config.get("hidden_size", config.get("n_embd")), config.get("num_attention_heads", config.get("n_head"))
    kv = config.get("num_hidden_layers", config.get("n_layer")) * 2 * config.get("num_key_value_heads", heads) * (width // heads) * 4
    model_bytes = (folder / "model.bin").stat().st_size
    step_bytes = StepBytes(model_bytes, kv, f"model.bin {model_bytes / 1e6:.1f} MB, embedding included (an upper bound); KV cache fp32")
    notes = [f"generator: TransformersConverter int8, cached in {folder}", "prefill at batch N (N prompt copies)",
             "scorers: the bundle's, on onnxruntime (replyrank's Scorers)",
             f"threads: intra_threads {args['threads']}, inter_threads 1 (not searched)",
             "kernel time: generate_batch (its own sampling inside) and the scorers' session runs"]
    return System(generate, disc, upv, notes=notes, kernel=clock, step_bytes=step_bytes)
