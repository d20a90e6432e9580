"""`sample_next` against distributions worked out by hand: greedy, EOS ban, top-k, top-p,
repetition penalty and temperature, each through the exact inverse-CDF pick a fixed rng makes,
and the temperature also through empirical frequencies; the graph's top candidates and an
overwritten buffer give the same picks."""

from __future__ import annotations

import numpy as np
import pytest

from replyrank.options import GenerationOptions
from replyrank.sampling import candidate_rngs, sample_next, top_k

SEEDS = range(200)


def _draw(seed: int) -> float:
    """The uniform number `sample_next` draws for a row whose rng is default_rng(seed)."""
    return np.random.default_rng(seed).random()


def _picks(logits: list[float], options: GenerationOptions, history: list[int] | None = None, ban: list[int] | None = None) -> list[int]:
    rows = np.tile(np.array(logits, dtype=np.float32), (len(SEEDS), 1))
    histories = [history or [] for _ in SEEDS] if history is not None else []
    rngs = [np.random.default_rng(seed) for seed in SEEDS]
    return sample_next(rows, histories, options, rngs, None if ban is None else np.array(ban)).tolist()


def _inverse_cdf(tokens: list[int], probs: list[float], u: float) -> int:
    """The token whose CDF interval holds u (tokens listed most likely first)."""
    return tokens[int(np.searchsorted(np.cumsum(probs), u, side="left"))]


def test_temperature_zero_is_argmax_and_draws_nothing():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    picks = sample_next(np.array([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]]), [], GenerationOptions(temperature=0), [rng, rng], None)
    assert picks.tolist() == [1, 0]
    assert rng.bit_generator.state == state  # greedy never touches the random generator


def test_a_banned_token_is_never_picked():
    assert sample_next(np.array([[9.0, 1.0, 0.5]]), [], GenerationOptions(temperature=0), [np.random.default_rng(0)], np.array([0])).tolist() == [1]
    # sampled: token 0 holds almost all the mass, yet never comes while banned
    picks = _picks([9.0, 1.0, 0.5], GenerationOptions(temperature=1.0, top_k=0), ban=[0])
    assert 0 not in picks and set(picks) == {1, 2}


def test_top_k_keeps_the_k_most_likely_with_their_renormalized_odds():
    # logits 3, 2, 1, 0 with k = 2: only tokens 0 and 1, with e^3 : e^2, i.e. e/(e+1) and 1/(e+1)
    options = GenerationOptions(temperature=1.0, top_k=2)
    p0 = np.e / (np.e + 1)
    expected = [_inverse_cdf([0, 1], [p0, 1 - p0], _draw(seed)) for seed in SEEDS]
    assert _picks([3.0, 2.0, 1.0, 0.0], options) == expected
    assert {0, 1} == set(expected)  # both kept tokens do come up


def test_top_p_keeps_the_smallest_prefix_that_reaches_p():
    # probabilities 0.5, 0.3, 0.15, 0.05 with p = 0.7: 0.5 < 0.7, 0.5 + 0.3 >= 0.7, so tokens 0 and 1, as 0.625 / 0.375
    options = GenerationOptions(temperature=1.0, top_k=0, top_p=0.7)
    expected = [_inverse_cdf([0, 1], [0.625, 0.375], _draw(seed)) for seed in SEEDS]
    assert _picks(list(np.log([0.5, 0.3, 0.15, 0.05])), options) == expected
    # the most likely token always stays, however small p is
    assert set(_picks(list(np.log([0.5, 0.3, 0.15, 0.05])), GenerationOptions(temperature=1.0, top_k=0, top_p=0.01))) == {0}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    # logits 2, 1, -1, 0; tokens 0 and 2 already in the text; penalty 2: 2 -> 1, -1 -> -2, so 1, 1, -2, 0
    options = GenerationOptions(temperature=1.0, top_k=0, repetition_penalty=2.0)
    penalized = np.array([1.0, 1.0, 0.0, -2.0])  # tokens 0, 1, 3, 2: most likely first (ties keep id order)
    probs = list(np.exp(penalized) / np.exp(penalized).sum())
    expected = [_inverse_cdf([0, 1, 3, 2], probs, _draw(seed)) for seed in SEEDS]
    assert _picks([2.0, 1.0, -1.0, 0.0], options, history=[0, 2, 0]) == expected


def test_temperature_sharpens_the_softmax_as_measured():
    # logits 1, 0 at temperature 0.5 are softmax(2, 0): P(token 0) = e^2 / (e^2 + 1) = 0.8808
    rows = 20_000
    logits = np.tile(np.array([1.0, 0.0], dtype=np.float32), (rows, 1))
    picks = sample_next(logits, [], GenerationOptions(temperature=0.5, top_k=0), candidate_rngs(0, rows), None)
    assert abs((picks == 0).mean() - np.e**2 / (np.e**2 + 1)) < 0.01
    flat = sample_next(logits, [], GenerationOptions(temperature=2.0, top_k=0), candidate_rngs(1, rows), None)
    assert abs((flat == 0).mean() - np.exp(0.5) / (np.exp(0.5) + 1)) < 0.01  # softmax(0.5, 0) = 0.6225


def test_each_row_draws_only_from_its_own_generator():
    options = GenerationOptions(temperature=1.0, top_k=0)
    alone = sample_next(np.array([[0.2, 0.1, 0.0]]), [], options, candidate_rngs(5, 3)[1:2], None)
    together = sample_next(np.array([[5.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 5.0]]), [], options, candidate_rngs(5, 3), None)
    assert together[1] == alone[0]


@pytest.mark.parametrize("seed", [None, 0, 7])
def test_candidate_rngs_spawn_from_the_seed(seed):
    first, second = candidate_rngs(seed, 4), candidate_rngs(seed, 4)
    draws = [rng.random() for rng in first]
    assert len(set(draws)) == 4
    assert (draws == [rng.random() for rng in second]) == (seed is not None)
    if seed is not None:
        children = np.random.SeedSequence(seed).spawn(4)
        assert draws == [np.random.default_rng(child).random() for child in children]


@pytest.mark.parametrize("vocab", [49_152, 1_000, 300])
def test_top_k_from_group_maxima_equals_a_full_stable_sort_ties_and_bans_included(vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(size=(8, vocab)).astype(np.float32).round(1)  # rounded: many equal logits
    logits[1] = 0.0  # a row of ties only
    logits[2, : vocab // 2] = -np.inf  # a banned half
    logits[3, -5:] = 50.0  # the best tokens in the vocabulary's ungrouped tail
    for k in (1, 2, 40, vocab):
        expected = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
        assert np.array_equal(top_k(logits, k), expected), k


@pytest.mark.parametrize("ban", [None, [3], [3, 7]])
@pytest.mark.parametrize("options", [GenerationOptions(top_k=40), GenerationOptions(top_k=5, top_p=0.8, temperature=1.3), GenerationOptions(top_k=1)])
def test_the_graphs_top_candidates_give_the_tokens_of_the_whole_logits(options, ban):
    """`top`: each row's largest logits and their ids in ONNX TopK's order (ties in id order), as a graph's head
    returns them (export.quantize.prune_lm_head), with room for the ban; the picks are those of searching the logits."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(SEEDS), 600)).astype(np.float32).round(1)  # rounded: many equal logits
    logits[:, 3] = 9.0  # the banned tokens would win every row
    logits[:, 7] = 8.0
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, : options.top_k + 2]
    top = (np.take_along_axis(logits, ids, axis=-1), ids)
    banned = None if ban is None else np.array(ban)
    whole = sample_next(logits, [], options, candidate_rngs(1, len(SEEDS)), banned)
    assert np.array_equal(sample_next(logits, [], options, candidate_rngs(1, len(SEEDS)), banned, top=top), whole)
    if ban:
        assert not np.isin(whole, ban).any()
    # too few candidates left after the ban, or a penalty that reorders the logits: the whole logits are searched
    short = (top[0][:, : options.top_k], top[1][:, : options.top_k])
    assert np.array_equal(sample_next(logits, [], options, candidate_rngs(1, len(SEEDS)), banned, top=short), whole)


def test_overwrite_picks_the_same_and_changes_only_the_callers_buffer_when_asked():
    logits = np.random.default_rng(0).standard_normal((4, 600)).astype(np.float32)
    logits[:, 7] = 10.0  # the banned token would win every row
    options, ban = GenerationOptions(temperature=0.8, top_k=30), np.array([7])
    kept = logits.copy()
    copied = sample_next(logits, [], options, candidate_rngs(3, 4), ban)
    assert np.array_equal(logits, kept)  # not asked: the caller's logits stay as they were
    overwritten = sample_next(logits, [], options, candidate_rngs(3, 4), ban, overwrite=True)
    assert np.array_equal(copied, overwritten) and 7 not in copied
    assert np.all(logits[:, 7] == -np.inf)  # asked: the ban was written into the buffer itself
