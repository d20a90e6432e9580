"""Candidate replies from an exported causal LM: a numpy sampling loop over the ONNX KV cache.

One code path serves every graph that optimum's `text-generation-with-past` export (or a graph
with the same interface) produces, GPT-2 and Llama-family alike: the feed is built from the
inputs the graph declares (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key/value`, and the bundles' `attention_bias`, `logits_to_keep` and `top_k`),
and `present.{i}.*` outputs become the next step's past.

The comment's prompt is prefilled once, with batch 1; the N candidates then decode together, one
token each a step (`Candidates`). Where the graph's attention takes a bias (the bundles' fused
graphs) they decode as one sequence after the prompt's single cache, each token seeing the prompt
and its own candidate's tokens; other graphs repeat the prompt's cache for one batch row per
candidate. Graphs whose attention writes the new keys and values into its past buffer
(GroupQueryAttention, manifest `"kv_cache": "in-place"`) get one buffer with room for the whole
decode, bound as both past and present, so a step copies nothing; other graphs return a grown copy
of the cache every step. Each candidate draws its random numbers from its own generator, so a seed
reproduces a run; candidate i is the same whether it is decoded alone or beside others where the
graph's kernels treat rows apart (MatMulNBits), not where one activation scale is shared by a
step's rows (the dynamic-int8 projections of export.quantize). Candidates that finish stop costing decode work.

The prompt template's constant prefix (BOS, system prompt, few-shot examples: everything before
`{comment}`) is prefilled once, when the `Generator` is built (or read from the bundle, which ships it as its
fp32 graph computed it: `GeneratorSpec.prefix_cache`); every prompt that starts with it
prefills only the comment and the template's suffix on top of that cache (the prefix caching of
vLLM and llama.cpp's `cache_prompt`, for one fixed prefix). The prefix cache is only ever read:
its buffer is exactly the prefix long, so no graph writes into it (see `forward`), and threads share it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .errors import BundleError, DeadlineExceeded, InputError
from .sessions import open_part

if TYPE_CHECKING:  # bundle.py records GenerationOptions in its specs, so it imports this module
    from .bundle import GeneratorSpec

_ONNX_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# The most cache buffer memory a generator keeps between replies for the next one (`Generator.keep_spare`): the
# default bundle's 8 candidates of a ~100-token prompt take 49 MB; larger decodes free theirs.
SPARE_BYTES = 64 << 20
TOP_K_GROUPS = 256  # see top_k: a top-k of up to this many tokens is taken from the groups' maxima

# The most one call may ask for, so that no request can exhaust the machine. `Bot`, the CLI and
# `replyrank serve` all refuse more (the server's flags may only lower them). The sizes come from
# the KV cache: for the default bundle's SmolLM2-135M (30 layers, 3 KV heads of 64, fp32) a
# token's cache costs 46 KB, so 256 comment tokens and 32 candidates x 256 new tokens hold about
# 0.4 GB (0.8 GB where each candidate holds its own copy of the prompt's: graphs without an
# attention bias), and decoding them takes tens of seconds on two cores.
MAX_CANDIDATES = 32  # candidate replies one call writes (they decode together)
MAX_NEW_TOKENS = 256  # tokens one candidate may add
MAX_STOP_STRINGS = 8  # each is searched for after every token of every candidate
MAX_COMMENT_CHARS = 40_000  # Reddit's longest post body; `Bot.reply` cuts a longer comment, the server refuses it
MAX_REPLIES = 64  # replies one `Bot.score` call ranks (they are scored as one batch)
MAX_REPLY_CHARS = 10_000  # Reddit's longest comment; a scorer reads at most its max_length tokens of it

# A caller's deadline for the decodes it starts (the server's per-request timeout). It is a
# context variable rather than an option: it belongs to one call, never to a bundle's sampling.
_deadline: ContextVar[float | None] = ContextVar("replyrank_deadline", default=None)


@contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Inside this block, a decode stops with `DeadlineExceeded` once `time.monotonic()` passes `at`.

    Checked between decode steps, so the thread is free again about one step after the deadline:
    `with deadline(time.monotonic() + 5): bot.reply(comment)`. None sets no deadline.
    """
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


@dataclass(frozen=True)
class GenerationOptions:
    """How candidates are sampled. `temperature=0` means greedy decoding."""

    candidates: int = 8
    max_new_tokens: int = 40
    min_new_tokens: int = 1
    temperature: float = 0.7
    top_k: int = 40  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    repetition_penalty: float = 1.0  # 1.0 disables; CTRL's rule, as transformers applies it
    stop: tuple[str, ...] = ()
    max_comment_tokens: int = 256
    seed: int | None = None  # any integer >= 0; None draws fresh entropy

    def check(self) -> None:
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise InputError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {self.candidates}")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise InputError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InputError(f"min_new_tokens must be between 0 and max_new_tokens, got {self.min_new_tokens}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_comment_tokens < 1:
            raise InputError(f"max_comment_tokens must be at least 1, got {self.max_comment_tokens}")
        if len(self.stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in self.stop):
            raise InputError(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InputError(f"seed must be an integer >= 0, got {self.seed!r}")


def check_replies(replies: list[str]) -> None:
    """Refuse more replies to score than `MAX_REPLIES`, or one longer than `MAX_REPLY_CHARS`."""
    if len(replies) > MAX_REPLIES:
        raise InputError(f"at most {MAX_REPLIES} replies can be ranked at once, got {len(replies)}")
    for reply in replies:
        if isinstance(reply, str) and len(reply) > MAX_REPLY_CHARS:
            raise InputError(f"a reply may be at most {MAX_REPLY_CHARS} characters, got one of {len(reply)}")


_LIST_MARKER = re.compile(r"\s+\d{1,2}[.)]$")  # a numbered list's next number, cut off after it
_SENTENCE_END = re.compile(r"""[.!?…]+["')\]]*(?=\s|$)|\n""")


def whole_sentences(text: str) -> str:
    """A reply the token limit cut off, ending at its last whole sentence or line (a reply bot never posts
    half a sentence); unchanged when it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text.rstrip())]
    if not ends:
        return text
    return _LIST_MARKER.sub("", text[: ends[-1]].rstrip()) or text  # "… a bad test. 2." ends at "test."


@dataclass(frozen=True)
class Generation:
    """One sampled continuation: its text, its token ids, and why it ended (`eos`, `stop` or `length`).

    The text of one that reached `max_new_tokens` ends at its last whole sentence (`whole_sentences`);
    `token_ids` are every token sampled.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str


@dataclass(frozen=True)
class Prompt:
    """The tokenized prompt and whether the comment had to be shortened to fit it."""

    ids: list[int]
    comment_tokens: int
    truncated: bool


@dataclass(frozen=True)
class Sample:
    """What `Generator.sample` returns: the prompt, one Generation per candidate, and the prefill's seconds."""

    prompt: Prompt
    generations: list[Generation]
    prefill_s: float


def candidate_rngs(seed: int | None, candidates: int) -> list[np.random.Generator]:
    """One independent random generator per candidate, spawned from `seed` (None: fresh entropy).

    Candidate i draws only from the i-th (its tokens also depend on its batch-mates where a graph's rows share a scale).
    """
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(candidates)]


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of each row's `k` largest logits (rows, vocab), largest first, equal logits in id order
    (except, where the row has fewer than TOP_K_GROUPS tokens or k is larger, which of the logits tied
    at the k-th place are kept: argpartition's choice, as before this function).

    Exact, and about 3x faster than partitioning the whole vocabulary (0.4 against 1.4 ms for 8 rows
    of 49,152): split a row's tokens into TOP_K_GROUPS interleaved groups; the k-th largest group
    maximum is at most the row's k-th largest logit (the k largest maxima are k distinct logits), so
    only the few tokens at or above it can be among the k, and only those are sorted.
    """
    rows, vocab = logits.shape
    if not k <= TOP_K_GROUPS <= vocab:  # too few groups for k: partition the whole row
        ids = np.sort(np.argpartition(logits, -k, axis=-1)[:, -k:], axis=-1) if k < vocab else np.tile(np.arange(vocab), (rows, 1))
        order = np.argsort(-np.take_along_axis(logits, ids, axis=-1), axis=-1, kind="stable")
        return np.take_along_axis(ids, order, axis=-1)
    # group j holds tokens j, j + TOP_K_GROUPS, ... (a vocabulary's last vocab % TOP_K_GROUPS tokens are in none,
    # which only lowers the floor: they are still compared with it)
    grouped = logits[:, : vocab - vocab % TOP_K_GROUPS].reshape(rows, -1, TOP_K_GROUPS)
    floor = np.partition(grouped.max(axis=1), -k, axis=-1)[:, -k]
    ids = np.empty((rows, k), dtype=np.int64)
    for row in range(rows):
        candidates = np.flatnonzero(logits[row] >= floor[row])
        ids[row] = candidates[np.argsort(-logits[row, candidates], kind="stable")[:k]]
    return ids


def sample_next(
    logits: np.ndarray, history: list[list[int]], options: GenerationOptions, rngs: list[np.random.Generator], ban: np.ndarray | None,
    overwrite: bool = False, top: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Pick one token per row of `logits` (rows, vocab); row i draws only from `rngs[i]`.

    `overwrite=True`: the logits are a float32 buffer the caller no longer needs, changed in place (no copy).
    `top`: these rows' largest logits and their ids as the graph found them ((rows, K) each, most likely first,
    equal logits in id order), which the draw takes instead of searching `logits` wherever they hold its top-k:
    no repetition penalty, and at least top_k of them left after the ban. The same tokens either way.
    """
    # a copy only where the logits are changed below and they are not ours to change
    changed = ban is not None or options.repetition_penalty != 1.0
    logits = logits.astype(np.float32, copy=changed and not overwrite)
    # forbid tokens that may not come yet (EOS before min_new_tokens)
    if ban is not None:
        logits[:, ban] = -np.inf
    # repetition penalty: make every token already in the row's text less likely
    if options.repetition_penalty != 1.0:
        for row, seen in enumerate(history):
            ids = np.unique(seen)
            values = logits[row, ids]
            logits[row, ids] = np.where(values > 0, values / options.repetition_penalty, values * options.repetition_penalty)
    # greedy: the most likely token, and no random draw at all
    if options.temperature == 0:
        return logits.argmax(axis=-1)
    banned = 0 if ban is None else len(ban)
    if top is not None and options.repetition_penalty == 1.0 and 0 < options.top_k <= top[1].shape[-1] - banned:
        # top-k from the graph's candidates: the banned ones out, then the k most likely of the rest, in order
        values, ids = top
        if ban is not None:
            values = np.where((ids[..., None] == ban).any(axis=-1), -np.inf, values)  # a ban is an id or two: np.isin costs 20x
        order = np.argsort(-values, axis=-1, kind="stable")[:, : options.top_k]
        token_ids, probs = np.take_along_axis(ids, order, axis=-1), draw_weights(np.take_along_axis(values, order, axis=-1), options)
    else:
        token_ids, probs = sampling_distribution(logits, options)
    # sample: one uniform draw per row from that row's own generator, inverted through the CDF
    draws = np.array([rng.random() for rng in rngs])
    cdf = np.cumsum(probs, axis=-1)
    picks = np.minimum((cdf < draws[:, None] * cdf[:, -1:]).sum(axis=-1), token_ids.shape[-1] - 1)
    return token_ids[np.arange(len(token_ids)), picks]


def sampling_distribution(logits: np.ndarray, options: GenerationOptions) -> tuple[np.ndarray, np.ndarray]:
    """What a draw chooses from, per row of `logits` (rows, vocab): token ids, most likely first, and their weights
    (float64; they sum to 1 unless top-p cut tokens to 0). Greedy (temperature 0): the most likely token alone."""
    if options.temperature == 0:
        return logits.argmax(axis=-1)[:, None], np.ones((len(logits), 1))
    # top-k: keep the k most likely tokens of each row, most likely first (all tokens when k is 0)
    k = options.top_k if 0 < options.top_k < logits.shape[-1] else logits.shape[-1]
    token_ids = top_k(logits, k)
    return token_ids, draw_weights(np.take_along_axis(logits, token_ids, axis=-1), options)


def draw_weights(kept: np.ndarray, options: GenerationOptions) -> np.ndarray:
    """The weights a draw gives each row's kept logits (rows, k; most likely first) under `options`' temperature and top-p."""
    # temperature, then softmax in float64: sharpen (< 1) or flatten (> 1) the distribution
    probs = np.exp((kept - kept[:, :1]) / options.temperature, dtype=np.float64)
    probs /= probs.sum(axis=-1, keepdims=True)
    # top-p: keep the smallest prefix of tokens whose probability reaches p (the top token always stays)
    if options.top_p < 1.0:
        probs[np.cumsum(probs, axis=-1) - probs >= options.top_p] = 0.0
    return probs


class Generator:
    """An exported causal LM, its tokenizer and its prompt template, ready to sample replies."""

    def __init__(self, model_dir: Path, spec: GeneratorSpec, threads: int | None = None):
        self.spec = spec
        self.template = spec.prompt_template
        if self.template.count("{comment}") != 1:
            raise BundleError("the generator's prompt_template must contain {comment} exactly once; re-export the bundle")
        self.eos_ids = np.array(spec.eos_token_ids, dtype=np.int64)
        self.eos_set = set(spec.eos_token_ids)  # looked up for every row of every step
        self.context_length = spec.context_length
        self.session, self.tokenizer = open_part(model_dir, threads)
        # The template's own markup (e.g. <|im_start|>) is parsed as special tokens, once, here;
        # after that the flag is set for good and a user's typed "<|endoftext|>" stays text.
        prefix, suffix = self.template.split("{comment}")
        self.prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=False).ids if prefix else []
        self.suffix_ids = self.tokenizer.encode(suffix, add_special_tokens=False).ids if suffix else []
        self.tokenizer.encode_special_tokens = True
        if spec.bos_token_id is not None:
            self.prefix_ids = [spec.bos_token_id] + self.prefix_ids

        self.in_place = spec.kv_cache == "in-place"
        # the cache buffers of the last finished `generate`, for the next one (in-place graphs; see `grown`)
        self.spare: dict[str, np.ndarray] | None = None
        self.spare_lock = threading.Lock()
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = set(inputs)
        self.past_names = [name for name in inputs if name.startswith("past_key_values.")]
        self.present_names = ["present." + name[len("past_key_values.") :] for name in self.past_names]
        missing = {"input_ids", "logits", *self.present_names} - self.input_names - {o.name for o in self.session.get_outputs()}
        if missing or not self.past_names:
            raise BundleError(f"the generator graph is not a KV-cache causal LM (missing {sorted(missing) or 'past inputs'}); re-export it")
        first_past = inputs[self.past_names[0]]
        self.kv_heads, self.head_dim = int(first_past.shape[1]), int(first_past.shape[3])
        self.cache_dtype = _ONNX_FLOAT[first_past.type]
        logits_info = self.session.get_outputs()[0]
        vocab = logits_info.shape[-1]
        # a graph exported with its LM head pruned returns the last position's logits only, (batch, 1, vocab), in a
        # prefill (a graph with `logits_to_keep`: in a one-sequence decode step, every position's)
        self.last_logits_only = logits_info.shape[1] == 1 or "logits_to_keep" in self.input_names
        # graphs whose attention takes a bias decode the candidates as one sequence on the prompt's cache (see Candidates)
        self.one_sequence = "attention_bias" in self.input_names
        # graphs that also return each position's top_k logits, for the draw (export.quantize.prune_lm_head)
        self.top_candidates = "top_k" in self.input_names
        # where both are known, a decode step writes its logits straight into a buffer of ours (no output list to fetch)
        self.vocab = vocab if isinstance(vocab, int) else None
        self.logits_dtype = _ONNX_FLOAT.get(logits_info.type)
        if isinstance(vocab, int) and self.tokenizer.get_vocab_size() > vocab:
            raise BundleError(
                f"the generator's tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model only {vocab}; "
                "the bundle mixes files of different models: re-export it"
            )
        # the template's prefix, prefilled once for every call (None when the template has none)
        self.prefix_cache: dict[str, ort.OrtValue] | None = None
        self.prefix_prefill_s = 0.0
        if self.prefix_ids:
            if len(self.prefix_ids) >= self.context_length:
                raise BundleError(
                    f"the prompt template's prefix is {len(self.prefix_ids)} tokens, no room left in the generator's "
                    f"{self.context_length}-token context; shorten the template and re-export the bundle"
                )
            start = time.perf_counter()
            self.prefix_cache = self.stored_prefix_cache(model_dir)
            if self.prefix_cache is None:
                _, self.prefix_cache = self.forward(np.array([self.prefix_ids], dtype=np.int64), 0, self.empty_cache(1))
            self.prefix_prefill_s = time.perf_counter() - start

    def stored_prefix_cache(self, model_dir: Path) -> dict[str, ort.OrtValue] | None:
        """The prefix's cache that the bundle ships (`GeneratorSpec.prefix_cache`, computed by the fp32 graph at export),
        or None where it ships none or computed it for another prefix (a template changed since)."""
        if self.spec.prefix_cache is None:
            return None
        path = model_dir / self.spec.prefix_cache
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError) as error:
            raise BundleError(f"cannot read the generator's prefix cache {path}: {error}; re-export the bundle") from None
        if "ids" not in arrays or arrays["ids"].tolist() != self.prefix_ids:
            return None
        shape = (1, self.kv_heads, len(self.prefix_ids), self.head_dim)
        wrong = [n for n in self.past_names if n not in arrays or arrays[n].shape != shape or arrays[n].dtype != self.cache_dtype]
        if wrong:
            raise BundleError(f"the generator's prefix cache {path} does not fit its graph ({wrong[0]}: want {shape} {np.dtype(self.cache_dtype)}); re-export the bundle")
        return {name: ort.OrtValue.ortvalue_from_numpy(arrays[name]) for name in self.past_names}

    def encode_prompt(self, comment: str, options: GenerationOptions) -> Prompt:
        """Prompt token ids. A comment too long for the context keeps its first tokens (the rest is dropped)."""
        # past MAX_COMMENT_CHARS nothing could reach the prompt anyway: cut before paying to tokenize it
        cut = len(comment) > MAX_COMMENT_CHARS
        comment_ids = self.tokenizer.encode(comment[:MAX_COMMENT_CHARS], add_special_tokens=False).ids
        room = self.context_length - options.max_new_tokens - len(self.prefix_ids) - len(self.suffix_ids)
        if room < 1:
            raise InputError(
                f"max_new_tokens={options.max_new_tokens} leaves no room for the comment in the generator's "
                f"{self.context_length}-token context; ask for fewer new tokens"
            )
        limit = min(room, options.max_comment_tokens)
        return Prompt(self.prefix_ids + comment_ids[:limit] + self.suffix_ids, len(comment_ids), cut or len(comment_ids) > limit)

    def forward(
        self, input_ids: np.ndarray, past_length: int, cache: dict[str, ort.OrtValue],
        binding: ort.IOBinding | None = None, out: np.ndarray | None = None,
        positions: np.ndarray | None = None, bias: np.ndarray | None = None, top: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict[str, ort.OrtValue]]:
        """One forward pass: logits (batch, length, vocab), or (batch, 1, vocab) from a graph whose head is pruned
        (`last_logits_only`), and the new cache, kept as OrtValues between steps.

        A cache with room beyond `past_length` (see `Candidates`) is updated in place and returned as is.
        `binding`: one from `bind_cache(cache)`, which a decode loop reuses step after step (the cache stays
        bound; only the inputs and the logits are bound again). `out`: a buffer of ours for the logits of an
        in-place step, (batch, 1, vocab) of `logits_dtype`, returned instead of a new array.
        `positions`: the tokens' positions (batch, length), `past_length` onwards by default. `bias`: the
        attention bias (batch, 1, length, past_length + length) of a one-sequence decode step (`Candidates`),
        which returns every position's logits; without it, attention is causal alone. `top`: buffers of ours,
        (batch, kept, K) float and int64, for an in-place step's K largest logits and their ids (`top_candidates` graphs).
        """
        batch, length = input_ids.shape
        in_place = self.in_place and cache[self.past_names[0]].shape()[2] >= past_length + length
        if binding is None:
            binding = self.bind_cache(cache) if in_place else self.session.io_binding()
        kept = length if bias is not None or not self.last_logits_only else 1
        binding.bind_cpu_input("input_ids", input_ids)
        if "attention_mask" in self.input_names:
            binding.bind_cpu_input("attention_mask", np.ones((batch, past_length + length), dtype=np.int64))
        if "position_ids" in self.input_names:
            if positions is None:
                positions = np.broadcast_to(np.arange(past_length, past_length + length, dtype=np.int64), (batch, length)).copy()
            binding.bind_cpu_input("position_ids", positions)
        if "attention_bias" in self.input_names:
            binding.bind_cpu_input("attention_bias", bias if bias is not None else np.zeros((batch, 1, length, past_length + length), np.float32))
        if "logits_to_keep" in self.input_names:
            binding.bind_cpu_input("logits_to_keep", np.array([kept], dtype=np.int64))
        if "top_k" in self.input_names:
            binding.bind_cpu_input("top_k", np.array([top[1].shape[-1] if top is not None else 1], dtype=np.int64))
        logits = None
        if in_place and self.vocab is not None and self.logits_dtype is not None:
            shape = (batch, kept, self.vocab)
            logits = out if out is not None and out.shape == shape else np.empty(shape, dtype=self.logits_dtype)
            binding.bind_output("logits", "cpu", element_type=self.logits_dtype, shape=list(logits.shape), buffer_ptr=logits.ctypes.data)
            if top is not None:
                for name, buffer in zip(("top_logits", "top_ids"), top):
                    binding.bind_output(name, "cpu", element_type=buffer.dtype.type, shape=list(buffer.shape), buffer_ptr=buffer.ctypes.data)
        else:
            binding.bind_output("logits", "cpu")
        if not in_place:
            for past, present in zip(self.past_names, self.present_names):
                binding.bind_ortvalue_input(past, cache[past])
                binding.bind_output(present, "cpu")
        self.session.run_with_iobinding(binding)
        if logits is not None:  # written into our buffer, the cache into its own: nothing to fetch
            return logits, cache
        output, *presents = binding.get_outputs()
        return output.numpy(), cache if in_place else dict(zip(self.past_names, presents))

    def bind_cache(self, cache: dict[str, ort.OrtValue]) -> ort.IOBinding:
        """A binding with each of `cache`'s buffers bound as both the past and the present of its layer (in-place graphs)."""
        binding = self.session.io_binding()
        for past, present in zip(self.past_names, self.present_names):
            binding.bind_ortvalue_input(past, cache[past])
            binding.bind_ortvalue_output(present, cache[past])
        return binding

    def empty_cache(self, batch: int) -> dict[str, ort.OrtValue]:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype)
        return {name: ort.OrtValue.ortvalue_from_numpy(empty) for name in self.past_names}

    def grown(self, cache: dict[str, ort.OrtValue], rows: int, length: int) -> dict[str, np.ndarray]:
        """The batch-1 prompt cache repeated for `rows` rows (in-place graphs: in buffers `length` long), as the arrays
        that hold the memory the decode's OrtValues point to.

        In-place graphs take the spare buffers a finished `generate` left (`keep_spare`) when they have
        at least `rows` rows and `length` positions: the batch is their first rows, and a longer buffer
        only means positions the attention never reads. Fresh buffers cost ~10 ms a reply in page faults
        (35-49 MB), 1% of it. One array a layer: a single block for all layers fills 3x faster (huge
        pages) but raised the benchmark's peak RSS from 385 to 418-431 MB.
        """
        spare = self.take_spare(rows, length) if self.in_place else None
        grown = {}
        for name, value in cache.items():
            prompt = value.numpy()
            if self.in_place:
                buffer = spare[name][:rows] if spare else np.zeros((rows, self.kv_heads, length, self.head_dim), dtype=prompt.dtype)
                buffer[:, :, : prompt.shape[2]] = prompt
            else:
                buffer = np.repeat(prompt, rows, axis=0)
            grown[name] = buffer
        return grown

    def take_spare(self, rows: int, length: int) -> dict[str, np.ndarray] | None:
        """The spare buffers, if they hold `rows` x `length`; either way there is no spare after this."""
        with self.spare_lock:
            spare, self.spare = self.spare, None
        first = next(iter(spare.values())) if spare else None
        return spare if first is not None and first.shape[0] >= rows and first.shape[2] >= length else None

    def keep_spare(self, buffers: dict[str, np.ndarray]) -> None:
        """Keep a finished decode's cache buffers (`grown`'s, or the spare they are the first rows of) for the next
        one, when they are at most SPARE_BYTES: what stays allocated between replies is bounded."""
        owners = {name: buffer if buffer.base is None else buffer.base for name, buffer in buffers.items()}
        if sum(owner.nbytes for owner in owners.values()) <= SPARE_BYTES:
            with self.spare_lock:
                self.spare = owners

    def drop_rows(self, cache: dict[str, ort.OrtValue], buffers: dict[str, np.ndarray], keep: list[int]) -> dict[str, ort.OrtValue]:
        """The cache of the batch rows `keep` (ascending) alone.

        In-place graphs: the kept rows move up inside `buffers` (`grown`'s, whose leading rows are the
        batch), and the cache is their first len(keep) rows, so nothing is allocated (a copy into fresh
        buffers took ~6 ms each time a candidate ended, 4% of a reply). Other graphs: a copy of the kept rows.
        """
        if not self.in_place:
            return {name: ort.OrtValue.ortvalue_from_numpy(value.numpy()[keep]) for name, value in cache.items()}
        first = next((to for to, row in enumerate(keep) if to != row), len(keep))  # rows before it stay where they are
        for buffer in buffers.values():
            for to in range(first, len(keep)):
                buffer[to] = buffer[keep[to]]
        return {name: ort.OrtValue.ortvalue_from_numpy(buffer[: len(keep)]) for name, buffer in buffers.items()}

    def sample(self, comment: str, options: GenerationOptions) -> Sample:
        """`options.candidates` replies to `comment`, seeded from `options.seed`: the one way candidates are sampled."""
        prompt = self.encode_prompt(comment, options)
        generations, prefill_s = self.generate(prompt.ids, options, candidate_rngs(options.seed, options.candidates))
        return Sample(prompt, generations, prefill_s)

    def cached_prefix_length(self, prompt_ids: list[int]) -> int:
        """How many leading tokens of `prompt_ids` the prefix cache holds: the whole prefix, or 0 if they do not start with it."""
        length = len(self.prefix_ids)
        # at least one token must remain to prefill: its logits are the first step's
        if self.prefix_cache is None or len(prompt_ids) <= length or prompt_ids[:length] != self.prefix_ids:
            return 0
        return length

    def generate(
        self, prompt_ids: list[int], options: GenerationOptions, rngs: list[np.random.Generator], reuse_prefix: bool = True
    ) -> tuple[list[Generation], float]:
        """Sample `len(rngs)` continuations of `prompt_ids` (row i uses only `rngs[i]`); also the prefill seconds.

        `reuse_prefix=False` prefills the whole prompt even where it starts with the cached template prefix
        (the tokens are the same either way; the tests compare them).
        """
        start = time.perf_counter()
        # prefill: run the prompt once, batch 1, from the template prefix's cache where the prompt starts with it;
        # that cache is exactly the prefix long, so the forward pass returns a new one and never writes into it
        cached = self.cached_prefix_length(prompt_ids) if reuse_prefix else 0
        past = self.prefix_cache if cached and self.prefix_cache is not None else self.empty_cache(1)
        logits, cache = self.forward(np.array([prompt_ids[cached:]], dtype=np.int64), cached, past)
        prefill_s = time.perf_counter() - start
        # share it: every candidate starts from the same prompt cache and next-token logits
        # the graph's top candidates hold a draw's top-k where no repetition penalty reorders the logits (see sample_next)
        top = options.top_k + len(self.eos_ids) if options.top_k and options.repetition_penalty == 1.0 else 0
        candidates = Candidates(self, len(prompt_ids), cache, len(rngs), options.max_new_tokens, top)
        try:
            generations = self.decode(prompt_ids, options, rngs, logits[:, -1], candidates)
        finally:
            if self.in_place:
                self.keep_spare(candidates.buffers)
        return generations, prefill_s

    def decode(
        self, prompt_ids: list[int], options: GenerationOptions, rngs: list[np.random.Generator], logits: np.ndarray, candidates: Candidates,
    ) -> list[Generation]:
        """`generate`'s decode loop, from the prompt's next-token logits (1, vocab) and its `candidates`' cache."""
        n = len(rngs)
        logits = np.repeat(logits, n, axis=0)
        tokens: list[list[int]] = [[] for _ in range(n)]
        finish: list[str] = ["length"] * n
        stop_at = _deadline.get()
        for step in range(options.max_new_tokens):
            # a caller's deadline (see `deadline`) stops the decode between steps
            if stop_at is not None and time.monotonic() > stop_at:
                raise DeadlineExceeded(f"the deadline passed after {step} of up to {options.max_new_tokens} new tokens")
            # sample the next token of every unfinished candidate
            rows = candidates.rows
            ban = self.eos_ids if step < options.min_new_tokens else None
            history = [prompt_ids + tokens[row] for row in rows] if options.repetition_penalty != 1.0 else []
            picks = sample_next(logits, history, options, [rngs[row] for row in rows], ban, True, candidates.top)  # the logits are ours
            # append it, and mark candidates that hit EOS or a stop string
            done = []
            for position, (row, token) in enumerate(zip(rows, picks.tolist())):
                if token in self.eos_set:
                    finish[row] = "eos"
                    done.append(position)
                    continue
                tokens[row].append(token)
                if options.stop and any(s in self.tokenizer.decode(tokens[row][-16:]) for s in options.stop):
                    finish[row] = "stop"
                    done.append(position)
            if step == options.max_new_tokens - 1:
                break
            # finished candidates stop decoding
            if done:
                keep = [p for p in range(len(rows)) if p not in done]
                if not keep:
                    break
                candidates.keep(keep)
                picks = picks[keep]
            # decode: one step for the rows still running
            logits = candidates.step(picks)
        return [Generation(self._text(tokens[row], options.stop, finish[row]), tuple(tokens[row]), finish[row]) for row in range(n)]

    def _text(self, token_ids: list[int], stop: tuple[str, ...], finish: str) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        for s in stop:
            text = text.split(s, 1)[0]
        return whole_sentences(text.strip()) if finish == "length" else text.strip()


class Candidates:
    """The cache of the candidates a `Generator` decodes, and one decode step of the rows still running.

    Two layouts. One sequence (`Generator.one_sequence`: graphs whose attention takes a bias, see
    export.quantize.decode_as_one_sequence): the prompt's cache once, then the rows' tokens one step after
    another, every step's tokens side by side; each token is at its row's position and attends to the prompt and
    to its own row's tokens, the bias hiding the others'. So a step reads the prompt once whatever the rows, and
    a finished row just adds no more tokens. Otherwise one batch row per candidate: the prompt's cache repeated
    for each, and a finished row's cache leaves the batch (`Generator.drop_rows`); so do graphs with a bias where
    the one sequence would outgrow the model's context.
    """

    def __init__(
        self, generator: Generator, prompt_length: int, cache: dict[str, ort.OrtValue], rows: int, max_new_tokens: int, top: int = 0,
    ):
        """`top`: how many of each row's largest logits a step also returns (`top_candidates` graphs, in place; 0: none)."""
        self.generator = generator
        self.rows = list(range(rows))  # the candidates still running, in step order
        self.position = prompt_length  # the position of every running row's next token
        # GroupQueryAttention's rotary tables must cover the whole sequence, and they are the model's context long
        self.one_sequence = generator.one_sequence and prompt_length + rows * max_new_tokens <= generator.context_length
        if self.one_sequence:
            self.length = prompt_length  # the cache's used length: the prompt, then every token decoded so far
            self.bias = np.full((rows, prompt_length + rows * max_new_tokens), -np.inf, dtype=np.float32)
            self.bias[:, :prompt_length] = 0.0  # row i sees the prompt, then its own tokens (set as they come)
            self.buffers = generator.grown(cache, 1, self.bias.shape[1])
        else:
            self.buffers = generator.grown(cache, rows, prompt_length + max_new_tokens)
        self.cache = {name: ort.OrtValue.ortvalue_from_numpy(buffer) for name, buffer in self.buffers.items()}
        # in-place graphs: the cache stays bound from step to step, and every step writes its logits into one buffer
        self.binding = generator.bind_cache(self.cache) if generator.in_place else None
        shape = (1, rows, generator.vocab) if self.one_sequence else (rows, 1, generator.vocab)
        self.logits = np.empty(shape, dtype=generator.logits_dtype) if generator.in_place and generator.vocab and generator.logits_dtype else None
        top = min(top, generator.vocab or 0) if generator.top_candidates and self.logits is not None else 0
        self.top_buffers = (np.empty((*shape[:2], top), dtype=self.logits.dtype), np.empty((*shape[:2], top), dtype=np.int64)) if top else None
        self.top: tuple[np.ndarray, np.ndarray] | None = None  # the last step's, (rows, top) each

    def keep(self, positions: list[int]) -> None:
        """Only the running rows at `positions` (ascending) run on."""
        self.rows = [self.rows[p] for p in positions]
        if not self.one_sequence:
            self.cache = self.generator.drop_rows(self.cache, self.buffers, positions)
            self.binding = self.generator.bind_cache(self.cache) if self.generator.in_place else None

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Append each running row's next token (`tokens`, in `rows` order); their next-token logits (rows, vocab)."""
        k, tokens = len(self.rows), tokens.astype(np.int64)
        if self.one_sequence:
            self.bias[self.rows, self.length + np.arange(k)] = 0.0  # each row's new token, seen by its row alone
            bias = self.bias[self.rows, : self.length + k][None, None]  # a row-indexed copy: contiguous
            out = self.logits[:, :k] if self.logits is not None else None
            top = tuple(buffer[:, :k] for buffer in self.top_buffers) if self.top_buffers else None
            positions = np.full((1, k), self.position, dtype=np.int64)
            logits, self.cache = self.generator.forward(tokens[None], self.length, self.cache, self.binding, out, positions, bias, top)
            logits = logits[0, -k:]
            self.top = tuple(buffer[0] for buffer in top) if top else None
            self.length += k
        else:
            out = self.logits[:k] if self.logits is not None else None
            top = tuple(buffer[:k] for buffer in self.top_buffers) if self.top_buffers else None
            logits, self.cache = self.generator.forward(tokens[:, None], self.position, self.cache, self.binding, out, top=top)
            logits = logits[:, -1]
            self.top = tuple(buffer[:, -1] for buffer in top) if top else None
        self.position += 1
        return logits
