"""Candidate replies from an exported causal LM: the `Generator` and its decode loop over the ONNX KV cache.

One code path serves every graph that optimum's `text-generation-with-past` export (or a graph
with the same interface) produces, GPT-2 and Llama-family alike: the feed is built from the
inputs the graph declares (`input_ids`, `attention_mask`, `position_ids`,
`past_key_values.{i}.key/value`, and the bundles' `attention_bias`, `logits_to_keep` and `top_k`),
and `present.{i}.*` outputs become the next step's past (`replyrank.kv_cache`).

The comment's prompt is prefilled once, with batch 1; the N candidates then decode together, one
token each a step (`Candidates`), each drawing from its own random generator (`replyrank.sampling`),
so a seed reproduces a run. Candidate i is the same whether it is decoded alone or beside others
where the graph's kernels treat rows apart (MatMulNBits), not where one activation scale is shared
by a step's rows (the dynamic-int8 projections of export.quantize). Candidates that finish stop
costing decode work.

The prompt template's constant prefix (BOS, system prompt, few-shot examples: everything before
`{comment}`) is prefilled once, when the `Generator` is built (or read from the bundle, which ships it as its
fp32 graph computed it: `GeneratorSpec.prefix_cache`); every prompt that starts with it
prefills only the comment and the template's suffix on top of that cache (the prefix caching of
vLLM and llama.cpp's `cache_prompt`, for one fixed prefix). The prefix cache is only ever read:
its buffer is exactly the prefix long, so no graph writes into it (see `forward`), and threads share it.

The options, limits and deadline (`replyrank.options`) and the sampling functions are re-exported
here, where callers have always imported them.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from .errors import BundleError, DeadlineExceeded, InputError
from .kv_cache import PAST_PREFIX, SPARE_BYTES, KVCache, bind_in_place, present_name
from .options import (
    MAX_CANDIDATES,
    MAX_COMMENT_CHARS,
    MAX_NEW_TOKENS,
    MAX_REPLIES,
    MAX_REPLY_CHARS,
    MAX_STOP_STRINGS,
    GenerationOptions,
    check_replies,
    deadline,
    past_deadline,
)
from .sampling import TOP_K_GROUPS, candidate_rngs, draw_weights, sample_next, sampling_distribution, top_k
from .sessions import open_part

if TYPE_CHECKING:
    from .bundle import GeneratorSpec

__all__ = [
    "MAX_CANDIDATES", "MAX_COMMENT_CHARS", "MAX_NEW_TOKENS", "MAX_REPLIES", "MAX_REPLY_CHARS", "MAX_STOP_STRINGS",
    "SPARE_BYTES", "TOP_K_GROUPS", "Candidates", "Generation", "GenerationOptions", "Generator", "Prompt", "Sample",
    "candidate_rngs", "check_replies", "deadline", "draw_weights", "sample_next", "sampling_distribution", "top_k",
    "whole_sentences",
]

_ONNX_FLOAT = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
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


class Generator:
    """An exported causal LM, its tokenizer and its prompt template, ready to sample replies.

    The keyword options choose between ways of decoding that give the same tokens (the tests compare them):
    one_sequence: True decodes the candidates as one sequence on the prompt's single cache where the graph's
        attention takes a bias (see `Candidates`); False gives each candidate a batch row and its own copy of
        the prompt's cache.
    graph_top_k: True draws from the largest logits that a graph with a `top_k` input returns
        (export.quantize.prune_lm_head) wherever they hold the draw's top-k; False searches the whole vocabulary.
    spare_bytes: the most cache buffer memory kept from one decode for the next (see `KVCache`); 0 keeps none.
    """

    def __init__(
        self, model_dir: Path, spec: GeneratorSpec, threads: int | None = None, *,
        one_sequence: bool = True, graph_top_k: bool = True, spare_bytes: int = SPARE_BYTES,
    ):
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
        self.spares: deque[dict[str, np.ndarray]] = deque(maxlen=1)  # the last in-place decode's buffers (KVCache)
        self.spare_bytes = spare_bytes
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = set(inputs)
        self.past_names = [name for name in inputs if name.startswith(PAST_PREFIX)]
        self.present_names = [present_name(name) for name in self.past_names]
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
        # graphs whose attention takes a bias can decode the candidates as one sequence on the prompt's cache
        self.one_sequence = one_sequence and "attention_bias" in self.input_names
        # graphs that also return each position's top_k logits, for the draw
        self.top_candidates = graph_top_k and "top_k" in self.input_names
        # where both are known, a decode step writes its logits straight into a buffer of ours (no output list to fetch)
        self.vocab = vocab if isinstance(vocab, int) else None
        self.logits_dtype = _ONNX_FLOAT.get(logits_info.type)
        if isinstance(vocab, int) and self.tokenizer.get_vocab_size() > vocab:
            raise BundleError(
                f"the generator's tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model only {vocab}; "
                "the bundle mixes files of different models: re-export it"
            )
        # the template's prefix, prefilled once for every call (None when the template has none)
        start = time.perf_counter()
        self.prefix_cache = self.prefill_prefix(model_dir)
        self.prefix_prefill_s = time.perf_counter() - start if self.prefix_cache is not None else 0.0

    def prefill_prefix(self, model_dir: Path) -> dict[str, ort.OrtValue] | None:
        """The template prefix's cache: the bundle's (`stored_prefix_cache`), else prefilled by this graph; None without a prefix."""
        if not self.prefix_ids:
            return None
        if len(self.prefix_ids) >= self.context_length:
            raise BundleError(
                f"the prompt template's prefix is {len(self.prefix_ids)} tokens, no room left in the generator's "
                f"{self.context_length}-token context; shorten the template and re-export the bundle"
            )
        stored = self.stored_prefix_cache(model_dir)
        if stored is not None:
            return stored
        _, cache = self.forward(np.array([self.prefix_ids], dtype=np.int64), 0, self.empty_cache(1))
        return cache

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

        A cache with room beyond `past_length` (see `KVCache`) is updated in place and returned as is.
        `binding`: a `KVCache`'s, which a decode loop reuses step after step (the cache stays bound; only the
        inputs and the logits are bound again). `out`: a buffer of ours for the logits of an in-place step,
        (batch, 1, vocab) of `logits_dtype`, returned instead of a new array.
        `positions`: the tokens' positions (batch, length), `past_length` onwards by default. `bias`: the
        attention bias (batch, 1, length, past_length + length) of a one-sequence decode step (`Candidates`),
        which returns every position's logits; without it, attention is causal alone. `top`: buffers of ours,
        (batch, kept, K) float and int64, for an in-place step's K largest logits and their ids (`top_candidates` graphs).
        """
        batch, length = input_ids.shape
        in_place = self.in_place and cache[self.past_names[0]].shape()[2] >= past_length + length
        if binding is None:
            binding = bind_in_place(self.session, cache) if in_place else self.session.io_binding()
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

    def empty_cache(self, batch: int) -> dict[str, ort.OrtValue]:
        """A cache of no positions, the past of a prefill from scratch."""
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.cache_dtype)
        return {name: ort.OrtValue.ortvalue_from_numpy(empty) for name in self.past_names}

    def new_kv_cache(self, prompt: dict[str, ort.OrtValue], rows: int, length: int) -> KVCache:
        """A decode's cache: the prompt's batch-1 `prompt` cache for `rows` rows, with room for `length` positions in place."""
        return KVCache(self.session, prompt, rows, length, self.in_place, self.spares, self.spare_bytes)

    def grown(self, prompt: dict[str, ort.OrtValue], rows: int, length: int) -> dict[str, np.ndarray]:
        """The arrays of a fresh `KVCache` (no spare taken), for a caller that steps `forward` itself."""
        return KVCache(self.session, prompt, rows, length, self.in_place).buffers

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
            candidates.kv_cache.release()
        return generations, prefill_s

    def decode(
        self, prompt_ids: list[int], options: GenerationOptions, rngs: list[np.random.Generator], logits: np.ndarray, candidates: Candidates,
    ) -> list[Generation]:
        """`generate`'s decode loop, from the prompt's next-token logits (1, vocab) and its `candidates`' cache."""
        n = len(rngs)
        logits = np.repeat(logits, n, axis=0)
        tokens: list[list[int]] = [[] for _ in range(n)]
        finish: list[str] = ["length"] * n
        for step in range(options.max_new_tokens):
            # a caller's deadline (see `deadline`) stops the decode between steps
            if past_deadline():
                raise DeadlineExceeded(f"the deadline passed after {step} of up to {options.max_new_tokens} new tokens")
            # sample the next token of every unfinished candidate (the logits are ours to overwrite)
            rows = candidates.rows
            ban = self.eos_ids if step < options.min_new_tokens else None
            history = [prompt_ids + tokens[row] for row in rows] if options.repetition_penalty != 1.0 else []
            picks = sample_next(logits, history, options, [rngs[row] for row in rows], ban, True, candidates.top)
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
        return [Generation(self.text(tokens[row], options.stop, finish[row]), tuple(tokens[row]), finish[row]) for row in range(n)]

    def text(self, token_ids: list[int], stop: tuple[str, ...], finish: str) -> str:
        """A candidate's reply: its tokens as text, cut before a stop string, or at its last whole sentence where the limit cut it."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        for s in stop:
            text = text.split(s, 1)[0]
        return whole_sentences(text.strip()) if finish == "length" else text.strip()


class Candidates:
    """The candidates a `Generator` decodes: which still run, at what position, and one decode step of them.

    Two layouts. One sequence (`Generator.one_sequence`: graphs whose attention takes a bias, see
    export.quantize.decode_as_one_sequence): the prompt's cache once, then the rows' tokens one step after
    another, every step's tokens side by side; each token is at its row's position and attends to the prompt and
    to its own row's tokens, the bias hiding the others'. So a step reads the prompt once whatever the rows, and
    a finished row just adds no more tokens. Otherwise one batch row per candidate: the prompt's cache repeated
    for each, and a finished row's cache leaves the batch (`KVCache.drop_rows`); so do graphs with a bias where
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
            self.kv_cache = generator.new_kv_cache(cache, 1, self.bias.shape[1])
        else:
            self.kv_cache = generator.new_kv_cache(cache, rows, prompt_length + max_new_tokens)
        # in-place graphs: every step writes its logits (and its top candidates) into buffers of ours
        shape = (1, rows, generator.vocab) if self.one_sequence else (rows, 1, generator.vocab)
        self.logits = np.empty(shape, dtype=generator.logits_dtype) if generator.in_place and generator.vocab and generator.logits_dtype else None
        top = min(top, generator.vocab or 0) if generator.top_candidates and self.logits is not None else 0
        self.top_buffers = (np.empty((*shape[:2], top), dtype=self.logits.dtype), np.empty((*shape[:2], top), dtype=np.int64)) if top else None
        self.top: tuple[np.ndarray, np.ndarray] | None = None  # the last step's, (rows, top) each

    def keep(self, positions: list[int]) -> None:
        """Only the running rows at `positions` (ascending) run on."""
        self.rows = [self.rows[p] for p in positions]
        if not self.one_sequence:
            self.kv_cache.drop_rows(positions)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        """Append each running row's next token (`tokens`, in `rows` order); their next-token logits (rows, vocab)."""
        k, tokens = len(self.rows), tokens.astype(np.int64)
        kv = self.kv_cache
        if self.one_sequence:
            self.bias[self.rows, self.length + np.arange(k)] = 0.0  # each row's new token, seen by its row alone
            bias = self.bias[self.rows, : self.length + k][None, None]  # a row-indexed copy: contiguous
            out = self.logits[:, :k] if self.logits is not None else None
            top = tuple(buffer[:, :k] for buffer in self.top_buffers) if self.top_buffers else None
            positions = np.full((1, k), self.position, dtype=np.int64)
            logits, kv.cache = self.generator.forward(tokens[None], self.length, kv.cache, kv.binding, out, positions, bias, top)
            logits = logits[0, -k:]
            self.top = tuple(buffer[0] for buffer in top) if top else None
            self.length += k
        else:
            out = self.logits[:k] if self.logits is not None else None
            top = tuple(buffer[:k] for buffer in self.top_buffers) if self.top_buffers else None
            logits, kv.cache = self.generator.forward(tokens[:, None], self.position, kv.cache, kv.binding, out, top=top)
            logits = logits[:, -1]
            self.top = tuple(buffer[:, -1] for buffer in top) if top else None
        self.position += 1
        return logits
