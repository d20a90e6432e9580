"""onnxruntime-genai's own runtime on its model builder's int4 CPU model."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import Generated, KernelClock, System, cache_key, cached, check_architecture, decoder, hf_folder, job_options, onnx_step_bytes, pair_scorers

PACKAGES = ["onnxruntime-genai", "onnxruntime", "transformers"]


def prepare(args: dict[str, Any]) -> Path:
    from onnxruntime_genai.models.builder import create_model

    hf = hf_folder(args)
    check_architecture(hf, "onnxruntime-genai's model builder", {"gpt2"})

    def build(out: Path) -> None:
        create_model("", str(hf), str(out), "int4", "cpu", str(out / "builder-cache"))
        shutil.rmtree(out / "builder-cache", ignore_errors=True)

    return cached(Path(args["cache"]), f"genai-int4-{cache_key(str(hf))}", build)


def load(name: str, args: dict[str, Any]) -> System:
    """onnxruntime-genai's own runtime on its builder's int4 CPU model: og.Generator with batch_size=N."""
    import onnxruntime_genai as og

    folder = Path(args["prepared"])
    # threads live in genai_config.json: give its session the same count as everyone else
    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"].setdefault("session_options", {}).update(
        intra_op_num_threads=args["threads"], inter_op_num_threads=1
    )
    config_path.write_text(json.dumps(config, indent=2))
    model = og.Model(str(folder))
    decode = decoder(folder)
    prompt = args["prompt_ids"]
    sampling = job_options(args)
    clock = KernelClock()

    def generate(n: int, t: int, seed: int) -> Generated:
        params = og.GeneratorParams(model)
        length = len(prompt) + t  # genai's lengths count the prompt
        params.set_search_options(
            do_sample=True, top_k=sampling.top_k, top_p=sampling.top_p, temperature=sampling.temperature,
            repetition_penalty=sampling.repetition_penalty,
            min_length=length, max_length=length, batch_size=n, random_seed=seed,
        )
        generator = og.Generator(model, params)
        start = time.perf_counter()
        clock.wrap(generator.append_tokens)(np.array([prompt] * n, dtype=np.int32))
        prefill_s = time.perf_counter() - start
        next_token = clock.wrap(generator.generate_next_token)
        while not generator.is_done():
            next_token()
        new = [list(generator.get_sequence(i))[len(prompt):] for i in range(n)]
        return Generated([decode(ids) for ids in new], [len(ids) for ids in new], prefill_s)

    disc, upv = pair_scorers(args, args["threads"], clock)
    notes = [f"generator: onnxruntime-genai builder, int4, CPU, cached in {folder}",
             "prefill at batch N (append_tokens of N prompt copies)", "scorers: the bundle's, on onnxruntime (replyrank's Scorers)",
             "kernel time: append_tokens, generate_next_token (its own sampling inside) and the scorers' session runs"]
    return System(generate, disc, upv, notes=notes, kernel=clock, step_bytes=onnx_step_bytes(folder))
