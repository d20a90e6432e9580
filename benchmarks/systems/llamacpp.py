"""llama-cpp-python on the GGUF the default generator comes from: sequential calls (`llamacpp`) or llama.cpp's batched API (`llamacpp-batched`).

The batched rows run on the shipped file (`llamacpp-batched`, SmolLM2's Q4_1) and on two
requantizations of it made with llama.cpp's own quantizer (`llama_model_quantize`):
`llamacpp-batched-q4_0` and `llamacpp-batched-q8_0`. A file requantized from Q4_1 has the speed of
one made from the original weights (same tensor types, same sizes), not its accuracy: its
weights went through Q4_1 first.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from replyrank.generate import candidate_rngs, sample_next

from .common import Generated, KernelClock, StepBytes, System, cache_key, cached, job_options, pair_scorers

PACKAGES = ["llama-cpp-python", "onnxruntime"]
# system -> the llama.cpp file type its GGUF is requantized to (llama_ftype: LLAMA_FTYPE_MOSTLY_*)
REQUANTIZED = {"llamacpp-batched-q4_0": "Q4_0", "llamacpp-batched-q8_0": "Q8_0"}
REQUANTIZED_NOTE = "requantized from the shipped Q4_1 with llama.cpp's quantizer: the speed of a {0} file, not the accuracy of one made from the original weights"


def shipped_gguf(args: dict[str, Any]) -> str:
    """The bundle's generator source where it is a GGUF, else the one the default bundle's generator comes from."""
    from replyrank.export.default import smollm2_gguf

    source = args["sources"]["generator"]
    return source if source.endswith(".gguf") else smollm2_gguf()


def llamacpp_gguf(args: dict[str, Any]) -> str:
    """The GGUF this system runs: its requantized copy (prepare) or the shipped file."""
    return args.get("prepared") or shipped_gguf(args)


def prepare(args: dict[str, Any]) -> Path | None:
    """The shipped GGUF requantized to the system's type with llama.cpp's own quantizer (cached); None for the shipped file."""
    quant = REQUANTIZED.get(args["system"])
    if quant is None:
        return None
    import llama_cpp as lc

    source = shipped_gguf(args)

    def requantize(out: Path) -> None:
        params = lc.llama_model_quantize_default_params()
        params.ftype = getattr(lc, f"LLAMA_FTYPE_MOSTLY_{quant}")
        params.allow_requantize = True  # the source is already quantized (Q4_1)
        params.nthread = args["threads"]
        code = lc.llama_model_quantize(source.encode(), str(out / "model.gguf").encode(), params)
        if code != 0:
            raise RuntimeError(f"llama_model_quantize({source} -> {quant}) returned {code}")

    return cached(Path(args["cache"]), f"gguf-{quant.lower()}-{cache_key(source)}", requantize) / "model.gguf"


def gguf_step_bytes(path: str) -> StepBytes:
    """Bytes a decode step reads from a GGUF: every tensor but an input embedding that is only gathered; KV cache f16 (llama.cpp's default)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    fields = {f.name: f for f in reader.fields.values()}

    def number(key: str) -> int:
        field = next(f for name, f in fields.items() if name.endswith(key))
        return int(field.parts[field.data[0]][0])

    # with no output.weight the head is tied: token_embd is the output matrix too, read in full every step
    gathered = sizes.get("token_embd.weight", 0) if "output.weight" in sizes else 0
    layers, heads, kv_heads, width = number(".block_count"), number(".attention.head_count"), number(".attention.head_count_kv"), number(".embedding_length")
    kv = layers * 2 * kv_heads * (width // heads) * 2
    how = (f"GGUF tensors {sum(sizes.values()) / 1e6:.1f} MB" + (f" less the {gathered / 1e6:.1f} MB token_embd (only gathered)" if gathered
           else " (tied head: token_embd is read as the output matrix)") + "; KV cache f16")
    return StepBytes(sum(sizes.values()) - gathered, kv, how)


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


def preload(args: dict[str, Any]) -> dict[str, Any]:
    """Whether llama.cpp's extra CPU weight buffers (its AMX repack, on a CPU that reports AMX) survive a decode here.

    A virtual machine can report AMX in cpuid and still trap the tile instructions: a build tuned
    with GGML_NATIVE then dies with SIGILL on the first prompt of more than one token, which no
    Python code can catch. So a child process tries it once, before the load clock starts; where
    it dies, both llama.cpp systems load their weights without the extra buffers
    (`llama_model_params.use_extra_bufts = False`, llama.cpp's `--no-repack`).
    """
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


def load_sequential(args: dict[str, Any]) -> System:
    """llama-cpp-python on the GGUF the default generator comes from: N sequential create_completion calls."""
    from llama_cpp import Llama

    source = args["sources"]["generator"]
    gguf = llamacpp_gguf(args)
    same_vocab = source == shipped_gguf(args)
    longest = max([args["t"], args["decode_t"], *args["scaling_ts"]])
    with llamacpp_model_params(args.get("llamacpp_extra_bufts", True)):
        llm = Llama(model_path=gguf, n_ctx=len(args["prompt_ids"]) + longest + 64, n_batch=512,
                    n_threads=args["threads"], n_threads_batch=args["threads"], verbose=False)
    # the bundle's prompt ids only mean the same tokens when the bundle's generator is this GGUF
    prompt = args["prompt_ids"] if same_vocab else llm.tokenize(args["prompt_text"].encode(), add_bos=False, special=True)
    never = {int(i): -1e4 for i in {llm.token_eos(), *(args["eos_ids"] if same_vocab else [])}}
    sampling = job_options(args)

    def generate(n: int, t: int, seed: int) -> Generated:
        llm.reset()  # every job pays for its prompt once; the N calls within it share the cached prefix
        texts, counts = [], []
        for i in range(n):
            out = llm.create_completion(
                prompt, max_tokens=t, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, min_p=0.0,
                typical_p=1.0, repeat_penalty=sampling.repetition_penalty, seed=seed * 1000 + i, logit_bias=never,
            )
            texts.append(out["choices"][0]["text"].strip())
            counts.append(out["usage"]["completion_tokens"])
        return Generated(texts, counts)

    disc, upv = pair_scorers(args, args["threads"])
    notes = [f"generator: {gguf} (its own quantization)", "SEQUENTIAL: N create_completion calls one after another, not the batched "
             "low-level API (that is llamacpp-batched); llama-cpp-python reuses the prompt's KV cache between calls", "EOS banned by logit_bias",
             "scorers: the bundle's, on onnxruntime (replyrank's Scorers)"]
    if args.get("llamacpp_probe"):
        notes.append(args["llamacpp_probe"])
    if not same_vocab:
        notes.append("bundle generator is not this GGUF: prompt tokenized by llama.cpp, scores of unrelated text")
    notes.append(f"threads: n_threads = n_threads_batch = {args['threads']} (not searched)")
    return System(generate, disc, upv, notes=notes, step_bytes=gguf_step_bytes(gguf))


def load_batched(args: dict[str, Any]) -> System:
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
    same_vocab = source == shipped_gguf(args)
    model_params = lc.llama_model_default_params()
    model_params.use_extra_bufts = args.get("llamacpp_extra_bufts", True)
    model = lc.llama_model_load_from_file(gguf.encode(), model_params)
    if not model:
        raise RuntimeError(f"llama_model_load_from_file failed on {gguf}")
    vocab = lc.llama_model_get_vocab(model)
    n_vocab = lc.llama_vocab_n_tokens(vocab)
    if same_vocab:
        prompt = [int(i) for i in args["prompt_ids"]]
    else:  # the bundle's prompt ids only mean the same tokens when the bundle's generator is this GGUF
        text = args["prompt_text"].encode()
        buffer = (lc.llama_token * (len(text) + 16))()
        count = lc.llama_tokenize(vocab, text, len(text), buffer, len(buffer), False, True)
        if count < 0:
            raise RuntimeError(f"llama_tokenize failed ({count})")
        prompt = list(buffer[:count])
    banned = np.array(sorted({int(i) for i in {lc.llama_vocab_eos(vocab), *(args["eos_ids"] if same_vocab else [])} if 0 <= int(i) < n_vocab}))
    sampling = job_options(args)
    longest = max([args["t"], args["decode_t"], *args["scaling_ts"]])
    # one context at a time, sized for the current N: n_seq_max = N, a unified KV cache holding
    # the prompt once plus N x the longest T, a batch that takes the prompt or N tokens at once;
    # threads (decode, prompt) and flash attention as `settings` says (searched below)
    settings = {"threads": args["threads"], "threads_batch": args["threads"], "flash_attn": False}
    held: dict[str, Any] = {"n": None}

    def context_for(n: int) -> tuple[Any, Any]:
        key = (n, settings["flash_attn"])
        if held["n"] == key:
            lc.llama_set_n_threads(held["ctx"], settings["threads"], settings["threads_batch"])
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
        params.n_threads, params.n_threads_batch = settings["threads"], settings["threads_batch"]
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if settings["flash_attn"] else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = lc.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama_init_from_model failed (n_ctx {params.n_ctx}, n_seq_max {n})")
        held.update(n=key, ctx=ctx, batch=lc.llama_batch_init(max(len(prompt), n), 0, 1))
        return ctx, held["batch"]

    def put(batch: Any, slot: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[slot] = token
        batch.pos[slot] = pos
        batch.n_seq_id[slot] = 1
        batch.seq_id[slot][0] = seq
        batch.logits[slot] = logits

    clock = KernelClock()
    llama_decode = clock.wrap(lc.llama_decode)

    def decode(ctx: Any, batch: Any) -> None:
        code = llama_decode(ctx, batch)
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
        rngs = candidate_rngs(seed, n)
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
            history = [prompt + new[seq] for seq in range(n)] if sampling.repetition_penalty != 1.0 else []
            tokens = sample_next(rows, history, sampling, rngs, banned)
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

    split = fastest_split(generate, settings, args)
    disc, upv = pair_scorers(args, args["threads"], clock)
    quant = REQUANTIZED.get(args["system"])
    notes = [f"generator: {gguf} " + (f"({REQUANTIZED_NOTE.format(quant)})" if quant else "(its own quantization)"),
             "BATCHED low-level API as llama.cpp's examples/batched: prompt decoded once in seq 0, llama_memory_seq_cp to seqs 1..N-1 "
             "(unified KV cache, n_seq_max = N), then one llama_decode of N tokens per step",
             f"sampling: replyrank's own sample_next on llama_get_logits_ith (top-k {sampling.top_k}, temperature {sampling.temperature}, "
             "EOS banned), one rng per row spawned from the seed",
             split, "scorers: the bundle's, on onnxruntime (replyrank's Scorers)",
             "kernel time: llama_decode calls and the scorers' session runs"]
    if args.get("llamacpp_probe"):
        notes.append(args["llamacpp_probe"])
    if not same_vocab:
        notes.append("bundle generator is not this GGUF: prompt tokenized by llama.cpp, scores of unrelated text")
    return System(generate, disc, upv, notes=notes, kernel=clock, step_bytes=gguf_step_bytes(gguf))


def fastest_split(generate: Any, settings: dict[str, Any], args: dict[str, Any], runs: int = 3) -> str:
    """Set `settings` to the fastest (decode threads, prompt threads, flash attention) for the job's generate; say what was tried.

    Every combination of 1..--threads threads for llama_decode of the N-token steps (n_threads) and
    of the prompt (n_threads_batch), flash attention off and on: a warm-up and `runs` generate
    calls of the job's N x T each, the lowest median kept.
    """
    n, t = args["n"], args["t"]
    started, tried = time.perf_counter(), {}
    for threads, threads_batch, flash_attn in itertools.product(range(1, args["threads"] + 1), range(1, args["threads"] + 1), (False, True)):
        settings.update(threads=threads, threads_batch=threads_batch, flash_attn=flash_attn)
        generate(n, t, 50_000)
        times = []
        for i in range(runs):
            start = time.perf_counter()
            generate(n, t, 50_001 + i)
            times.append(time.perf_counter() - start)
        tried[(threads, threads_batch, flash_attn)] = statistics.median(times) * 1e3
    best = min(tried, key=tried.__getitem__)
    settings.update(threads=best[0], threads_batch=best[1], flash_attn=best[2])
    listed = ", ".join(f"{a}/{b}/{'on' if fa else 'off'} {ms:,.0f}" for (a, b, fa), ms in tried.items())
    return (f"fastest split kept: n_threads {best[0]}, n_threads_batch {best[1]}, flash attention {'on' if best[2] else 'off'} "
            f"(generate ms, median of {runs} at N = {n}, T = {t}, decode/prompt threads/flash attention: {listed}; "
            f"the search took {time.perf_counter() - started:.1f} s of the load time)")


def load(name: str, args: dict[str, Any]) -> System:
    return load_sequential(args) if name == "llamacpp" else load_batched(args)
