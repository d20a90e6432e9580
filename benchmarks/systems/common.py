"""What every system of the reply-job benchmark shares: the interface a system loads into
(`System`, `Generated`), the job's sampling settings, cached conversions, and the bundle's own
scorers for peers that have no encoder API of their own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from replyrank.generate import GenerationOptions


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
    # seconds spent so far inside the runtimes' compute calls (see KernelClock); None where not measurable
    kernel: KernelClock | None = None
    # what a decode step must read (see StepBytes), for the bandwidth floor; None where unknown
    step_bytes: StepBytes | None = None


class KernelClock:
    """Seconds spent inside the compute calls it wraps (a session run, llama_decode, generate_batch).

    The rest of a job's wall time is work outside the kernels: tokenizing, sampling, cache moves,
    selection, the glue between calls.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds = 0.0
        self.clock = clock  # seconds, monotonic; a test passes its own

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.clock()
            try:
                return call(*args, **kwargs)
            finally:
                self.seconds += self.clock() - start

        return timed


@dataclass
class StepBytes:
    """Bytes one decode step must read: the weights (less a table that is only gathered) and the KV cache per cached token of one row."""

    weights: int
    kv_per_token: int
    how: str


def onnx_step_bytes(folder: Path) -> StepBytes:
    """A KV-cache ONNX causal LM's folder: its model files less the embedding table Gather reads by input_ids; KV from its past inputs."""
    import numpy as np
    import onnx

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    file_bytes = sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    embedding = onnx_embedding_bytes(model)
    past = [i for i in model.graph.input if i.name.startswith("past_key_values.")]
    dims = past[0].type.tensor_type.shape.dim
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(past[0].type.tensor_type.elem_type)).itemsize
    kv = len(past) * dims[1].dim_value * dims[3].dim_value * itemsize  # len(past) counts keys and values
    return StepBytes(file_bytes - embedding, kv, f"model.onnx* {file_bytes / 1e6:.1f} MB less the {embedding / 1e6:.1f} MB embedding table (only gathered)")


def onnx_embedding_bytes(model: Any) -> int:
    """Bytes of the tables that Gather reads by input_ids: only looked up, never streamed per step."""
    import numpy as np
    from onnx import helper

    initializers = {i.name: i for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    total = 0
    for node in model.graph.node:
        if not node.op_type.startswith("Gather") or len(node.input) < 2 or node.input[1] != "input_ids":
            continue
        # follow the table back through layout ops (the genai builder stores it transposed)
        pending, seen = [node.input[0]], set()
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in initializers:
                tensor = initializers[name]
                total += int(np.prod(tensor.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            elif name in producers and producers[name].op_type in ("Transpose", "Cast", "Identity", "Reshape", "DequantizeLinear"):
                pending.extend(producers[name].input[:1] if producers[name].op_type != "DequantizeLinear" else producers[name].input)
    return total


def job_options(args: dict[str, Any]) -> GenerationOptions:
    """The sampling every system gets: the bundle's deployment sampling, as bench.py passes it (`args["sampling"]`)."""
    return GenerationOptions(**args["sampling"])


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


def pair_scorers(
    args: dict[str, Any], threads: int, clock: KernelClock | None = None
) -> tuple[Callable[[list[str]], Any], Callable[[list[str]], Any]]:
    """The bundle's two scorers on ONNX Runtime, as replyrank runs them (for peers with no encoder API).

    A bundle whose two heads share one graph runs it once for both: the first call scores both
    heads and the second reads the same run, so a peer pays for the encoder once, as replyrank does.
    """
    from replyrank.bundle import DISCRIMINATOR, UPVOTES, Bundle
    from replyrank.score import Scorers

    scorers = Scorers(Bundle.read(args["bundle"], verify_hashes=False), threads)
    if clock is not None:
        clock_sessions(clock, [graph.session for graph in scorers.graphs.values()])
    comment, last = args["comment"], {}

    def head(name: str) -> Callable[[list[str]], Any]:
        def score(texts: list[str]) -> Any:
            if last.get("texts") != texts:
                last.update(texts=list(texts), scores=scorers(comment, texts))  # every head, one run of each graph
            return last["scores"][name]

        return score

    return head(DISCRIMINATOR), head(UPVOTES)


def scorer_max_length(args: dict[str, Any]) -> int:
    """The tokens of a (comment, reply) pair the bundle's scorers read, which peers' own scorers are given too."""
    from replyrank.bundle import Bundle

    return Bundle.read(args["bundle"], verify_hashes=False).discriminator.max_length


def decoder(folder: Path) -> Callable[[list[int]], str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()


def source_dir(args: dict[str, Any], part: str) -> Path | None:
    source = args["sources"].get(part)
    return Path(source) if source else None


def clock_sessions(clock: KernelClock, sessions: list[Any]) -> None:
    """Count the time inside each ONNX Runtime session's runs on `clock`."""
    for session in sessions:
        session.run = clock.wrap(session.run)
        session.run_with_iobinding = clock.wrap(session.run_with_iobinding)
