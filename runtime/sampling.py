"""Next-token sampling in plain numpy: temperature, top-k, top-p, repetition penalty and an EOS ban.

As nanoGPT's `generate` reads: scale by temperature, cut to top-k, softmax, sample, one line and
one comment a step. Every candidate draws from its own `np.random.Generator`, passed in, so a
seed reproduces a run and a candidate's draws never depend on how many candidates run beside it.
"""

from __future__ import annotations

import numpy as np

from .options import GenerationOptions

TOP_K_GROUPS = 256  # see top_k: a top-k of up to this many tokens is taken from the groups' maxima


def candidate_rngs(seed: int | None, candidates: int) -> list[np.random.Generator]:
    """One independent random generator per candidate, spawned from `seed` (None: fresh entropy).

    Candidate i draws only from the i-th (its tokens also depend on its batch-mates where a graph's rows share a scale).
    """
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(candidates)]


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """The ids of each row's `k` largest logits (rows, vocab), largest first, equal logits in id order
    (except, where the row has fewer than TOP_K_GROUPS tokens or k is larger, which of the logits tied
    at the k-th place are kept: argpartition's choice).

    Exact, and cheaper than partitioning the whole vocabulary: split a row's tokens into TOP_K_GROUPS
    interleaved groups; the k-th largest group maximum is at most the row's k-th largest logit (the k
    largest maxima are k distinct logits), so only the few tokens at or above it can be among the k,
    and only those are sorted.
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

    `history`: each row's token ids so far (prompt included), read only for the repetition penalty.
    `ban`: token ids that may not come yet (EOS before min_new_tokens), or None.
    `overwrite=True`: the logits are a float32 buffer the caller no longer needs, changed in place (no copy).
    `top`: these rows' largest logits and their ids as the graph found them ((rows, K) each, most likely first,
    equal logits in id order), which the draw takes instead of searching `logits` wherever they hold its top-k:
    no repetition penalty, and at least top_k of them left after the ban. The same tokens either way.
    """
    # a copy only where the logits are changed below and they are not ours to change
    changed = ban is not None or options.repetition_penalty != 1.0
    logits = logits.astype(np.float32, copy=changed and not overwrite)
    # forbid tokens that may not come yet
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
    # what to draw from: the graph's top candidates where they hold the top-k, else a search of the whole logits
    banned = 0 if ban is None else len(ban)
    if top is not None and options.repetition_penalty == 1.0 and 0 < options.top_k <= top[1].shape[-1] - banned:
        token_ids, probs = graph_top_k_distribution(top, ban, options)
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


def graph_top_k_distribution(
    top: tuple[np.ndarray, np.ndarray], ban: np.ndarray | None, options: GenerationOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """`sampling_distribution` from the graph's own top candidates (values and ids, (rows, K), most likely first)."""
    values, ids = top
    # the banned tokens out (a ban is an id or two: comparing with each is cheaper than np.isin)
    if ban is not None:
        values = np.where((ids[..., None] == ban).any(axis=-1), -np.inf, values)
    # top-k: the k most likely of the rest, in order (stable: equal logits stay in id order)
    order = np.argsort(-values, axis=-1, kind="stable")[:, : options.top_k]
    return np.take_along_axis(ids, order, axis=-1), draw_weights(np.take_along_axis(values, order, axis=-1), options)


def draw_weights(kept: np.ndarray, options: GenerationOptions) -> np.ndarray:
    """The weights a draw gives each row's kept logits (rows, k; most likely first) under `options`' temperature and top-p."""
    # temperature, then softmax in float64: sharpen (< 1) or flatten (> 1) the distribution
    probs = np.exp((kept - kept[:, :1]) / options.temperature, dtype=np.float64)
    probs /= probs.sum(axis=-1, keepdims=True)
    # top-p: keep the smallest prefix of tokens whose probability reaches p (the top token always stays)
    if options.top_p < 1.0:
        probs[np.cumsum(probs, axis=-1) - probs >= options.top_p] = 0.0
    return probs
