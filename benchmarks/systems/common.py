"""What every system of the reply-job benchmark shares: the interface a system loads into
(`System`, `Generated`), the job's sampling settings, cached conversions, and the bundle's own
scorers for peers that have no encoder API of their own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


def pair_scorers(args: dict[str, Any], threads: int) -> tuple[Callable[[list[str]], Any], Callable[[list[str]], Any]]:
    """The bundle's two scorers on ONNX Runtime, as replyrank runs them (for peers with no encoder API), each timed alone."""
    from replyrank.bundle import DISCRIMINATOR, UPVOTES, Bundle
    from replyrank.score import Scorers

    scorers = Scorers(Bundle.read(args["bundle"], verify_hashes=False), threads)
    comment = args["comment"]
    return (lambda texts: scorers(comment, texts, [DISCRIMINATOR])), (lambda texts: scorers(comment, texts, [UPVOTES]))


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
