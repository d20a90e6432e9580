"""The decode loop's fast path (the candidates as one sequence on the prompt's cache, bound once, the logits written
into one buffer and the EOS ban applied in place) gives the tokens of the plain loop: one batch row per candidate, a
fresh binding and a fresh logits array every step."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import replyrank
from replyrank.generate import SPARE_BYTES, GenerationOptions, candidate_rngs, sample_next

COMMENT = "has anyone tried the pasta place near campus"
GREEDY = GenerationOptions(candidates=3, max_new_tokens=12, min_new_tokens=12, temperature=0)
SEEDED = GenerationOptions(candidates=5, max_new_tokens=12, min_new_tokens=12, temperature=1.3, top_k=20)


@pytest.fixture(scope="module", params=["gpt2_bundle", "llama_bundle"])
def generator(request):
    return replyrank.load(request.getfixturevalue(request.param), realism_threshold=0.0).generator


def plain_loop(generator, prompt: list[int], options: GenerationOptions, seed: int) -> list[tuple[int, ...]]:
    """The decode without the fast path: one batch row per candidate, the whole cache bound again and new logits
    returned every step; the ban copies them."""
    n, rngs = options.candidates, candidate_rngs(seed, options.candidates)
    logits, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    cache = {name: ort.OrtValue.ortvalue_from_numpy(b) for name, b in generator.grown(cache, n, len(prompt) + options.max_new_tokens).items()}
    logits = np.repeat(logits[:, -1], n, axis=0)
    tokens: list[list[int]] = [[] for _ in range(n)]
    for step in range(options.max_new_tokens):
        picks = sample_next(logits, [], options, rngs, generator.eos_ids)  # min_new_tokens = max_new_tokens: EOS banned throughout
        for row, token in enumerate(picks.tolist()):
            tokens[row].append(token)
        logits, cache = generator.forward(picks[:, None].astype(np.int64), len(prompt) + step, cache)
        logits = logits[:, -1]
    return [tuple(t) for t in tokens]


@pytest.mark.parametrize("options", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_generate_gives_the_plain_loops_tokens(generator, options) -> None:
    """The candidates decoded as one sequence on the prompt's cache (Candidates) get the tokens of batch rows."""
    assert generator.in_place and generator.one_sequence
    prompt = generator.encode_prompt(COMMENT, options).ids
    for seed in (0, 1):
        fast, _ = generator.generate(prompt, options, candidate_rngs(seed, options.candidates), reuse_prefix=False)
        assert [g.token_ids for g in fast] == plain_loop(generator, prompt, options, seed)


def test_overwrite_picks_the_same_and_changes_only_the_callers_buffer_when_asked() -> None:
    logits = np.random.default_rng(0).standard_normal((4, 600)).astype(np.float32)
    logits[:, 7] = 10.0  # the banned token would win every row
    options, ban = GenerationOptions(temperature=0.8, top_k=30), np.array([7])
    kept = logits.copy()
    copied = sample_next(logits, [], options, candidate_rngs(3, 4), ban)
    assert np.array_equal(logits, kept)  # not asked: the caller's logits stay as they were
    overwritten = sample_next(logits, [], options, candidate_rngs(3, 4), ban, overwrite=True)
    assert np.array_equal(copied, overwritten) and 7 not in copied
    assert np.all(logits[:, 7] == -np.inf)  # asked: the ban was written into the buffer itself


def test_candidates_that_end_early_leave_the_batch_without_changing_the_others(generator, monkeypatch) -> None:
    """Finished candidates stop decoding: as one sequence they just add no more tokens; as batch rows (graphs
    without an attention bias) the later rows move up inside the cache buffers. Both give the tokens and finishes
    of copying the kept rows into fresh buffers (how it was done before)."""
    options = GenerationOptions(candidates=5, max_new_tokens=12, min_new_tokens=0, temperature=1.3, top_k=20)
    prompt = generator.encode_prompt(COMMENT, options).ids
    full, _ = generator.generate(prompt, options, candidate_rngs(0, 5), reuse_prefix=False)
    # make two tokens the rows sampled "EOS", so rows end at different steps
    monkeypatch.setattr(generator, "eos_set", set(generator.eos_set) | {full[0].token_ids[3], full[2].token_ids[6]})
    runs = [generator.generate(prompt, options, candidate_rngs(0, 5), reuse_prefix=False)[0]]
    finishes = [g.finish_reason for g in runs[0]]
    assert "eos" in finishes and "length" in finishes, finishes  # rows left mid-run, others ran on
    monkeypatch.setattr(generator, "one_sequence", False)
    runs.append(generator.generate(prompt, options, candidate_rngs(0, 5), reuse_prefix=False)[0])
    copied = lambda cache, buffers, keep: {n: ort.OrtValue.ortvalue_from_numpy(v.numpy()[keep]) for n, v in cache.items()}  # noqa: E731
    monkeypatch.setattr(generator, "drop_rows", copied)
    runs.append(generator.generate(prompt, options, candidate_rngs(0, 5), reuse_prefix=False)[0])
    assert len({tuple((g.token_ids, g.finish_reason) for g in run) for run in runs}) == 1


def test_a_reply_on_the_last_replys_spare_buffers_gives_the_tokens_of_fresh_ones(generator) -> None:
    """A decode keeps its cache buffers for the next one; a shorter prompt then runs in longer, used buffers,
    with the tokens of new zeroed ones. Buffers over SPARE_BYTES are not kept."""
    options = GenerationOptions(candidates=4, max_new_tokens=10, min_new_tokens=10, temperature=1.3, top_k=20)
    short = generator.encode_prompt("pasta?", options).ids
    generator.spare = None
    fresh, _ = generator.generate(short, options, candidate_rngs(2, 4), reuse_prefix=False)
    generator.generate(generator.encode_prompt(COMMENT * 3, options).ids, options, candidate_rngs(5, 4), reuse_prefix=False)
    spare = generator.spare
    assert spare is not None and next(iter(spare.values())).shape[2] > len(short) + options.max_new_tokens
    reused, _ = generator.generate(short, options, candidate_rngs(2, 4), reuse_prefix=False)
    assert [g.token_ids for g in reused] == [g.token_ids for g in fresh]
    assert all(a is b for a, b in zip(generator.spare.values(), spare.values()))  # the same buffers, kept again
    generator.keep_spare({name: np.zeros(SPARE_BYTES // len(spare) + 1, np.uint8) for name in spare})
    assert all(a is b for a, b in zip(generator.spare.values(), spare.values()))  # too large: not kept


@pytest.mark.parametrize("options", [SEEDED, GenerationOptions(candidates=4, max_new_tokens=12, min_new_tokens=3, temperature=0.8, top_k=10, top_p=0.9)])
def test_the_graphs_top_logits_give_the_tokens_of_searching_the_whole_vocabulary(generator, options, monkeypatch) -> None:
    """A decode step's top_k logits from the graph (export.quantize.prune_lm_head) stand in for the sampling's own
    search of the vocabulary; the tokens and finishes are the same."""
    assert generator.top_candidates
    prompt = generator.encode_prompt(COMMENT, options).ids
    searches = []  # which steps searched the whole vocabulary
    monkeypatch.setattr(replyrank.generate, "top_k", lambda logits, k, search=replyrank.generate.top_k: searches.append(k) or search(logits, k))
    runs = [generator.generate(prompt, options, candidate_rngs(seed, options.candidates))[0] for seed in (0, 1)]
    assert len(searches) == 2  # the first step of each (the prefill's logits) alone
    monkeypatch.setattr(generator, "top_candidates", False)
    searched = [generator.generate(prompt, options, candidate_rngs(seed, options.candidates))[0] for seed in (0, 1)]
    assert len(searches) > 2 + 2
    assert [[(g.token_ids, g.finish_reason) for g in run] for run in runs] == [[(g.token_ids, g.finish_reason) for g in run] for run in searched]
