"""The generator's decode: every way it can run (one sequence or batch rows, the graph's top-k or a search of the
vocabulary, spare or fresh buffers, with or without the template prefix's cache) gives the tokens of a plain loop."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import replyrank
import replyrank.sampling
from replyrank.bundle import Bundle, GeneratorSpec
from replyrank.generate import Candidates, GenerationOptions, Generator, candidate_rngs, sample_next

COMMENT = "has anyone tried the pasta place near campus"
GREEDY = GenerationOptions(candidates=3, max_new_tokens=12, min_new_tokens=12, temperature=0)
SEEDED = GenerationOptions(candidates=5, max_new_tokens=12, min_new_tokens=12, temperature=1.3, top_k=20)
# a few-shot prefix, as the default bundle's template may carry: long enough that reusing it matters
FEW_SHOT = "".join(f"comment: {a}\nreply: {b}\n" for a, b in [
    ("what do you think about the new library in town", "i think it is great and the coffee is good too"),
    ("how many hours a week do you study for finals", "too many honestly, i need a break and some sleep"),
]) + "comment: {comment}\nreply:"
PREFIX_GREEDY = GenerationOptions(candidates=3, max_new_tokens=16, temperature=0)
PREFIX_SAMPLED = GenerationOptions(candidates=5, max_new_tokens=20, temperature=1.2, top_k=0, top_p=0.95, repetition_penalty=1.2)


def open_generator(bundle_dir: Path, spec: GeneratorSpec | None = None, **options) -> Generator:
    """The bundle's generator (or one on its graph with another `spec`), built with `options`."""
    bundle = Bundle.read(bundle_dir)
    return Generator(bundle.folder(bundle.generator), spec or bundle.generator, **options)


def tokens(generator: Generator, prompt: list[int], options: GenerationOptions, seed: int, reuse_prefix: bool = False) -> list:
    generations, _ = generator.generate(prompt, options, candidate_rngs(seed, options.candidates), reuse_prefix=reuse_prefix)
    return [(g.token_ids, g.finish_reason) for g in generations]


def plain_loop(generator: Generator, prompt: list[int], options: GenerationOptions, seed: int) -> list:
    """The decode written the plainest way: one batch row per candidate, each holding a copy of the prompt's cache,
    the grown cache returned every step, the EOS ban (min_new_tokens = max_new_tokens) on a copy of the logits."""
    n, rngs = options.candidates, candidate_rngs(seed, options.candidates)
    logits, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    cache = {name: ort.OrtValue.ortvalue_from_numpy(np.repeat(value.numpy(), n, axis=0)) for name, value in cache.items()}
    logits = np.repeat(logits[:, -1], n, axis=0)
    rows: list[list[int]] = [[] for _ in range(n)]
    for step in range(options.max_new_tokens):
        picks = sample_next(logits, [], options, rngs, generator.eos_ids)
        for row, token in enumerate(picks.tolist()):
            rows[row].append(token)
        logits, cache = generator.forward(picks[:, None].astype(np.int64), len(prompt) + step, cache)
        logits = logits[:, -1]
    return [(tuple(row), "length") for row in rows]


@pytest.fixture(scope="module", params=["gpt2_bundle", "llama_bundle"])
def bundle_dir(request) -> Path:
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("options", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_every_way_of_decoding_gives_the_plain_loops_tokens(bundle_dir, options) -> None:
    """One sequence on the prompt's cache or a batch row each, the graph's top logits or a search of the vocabulary,
    buffers written in place or a grown copy each step, spare buffers or fresh ones: the same tokens."""
    default = open_generator(bundle_dir)
    assert default.in_place and default.one_sequence and default.top_candidates
    variants = [
        default,
        open_generator(bundle_dir, one_sequence=False),
        open_generator(bundle_dir, graph_top_k=False, spare_bytes=0),
        open_generator(bundle_dir, replace(default.spec, kv_cache="concat")),
    ]
    assert [(g.one_sequence, g.top_candidates, g.in_place) for g in variants[1:]] == [(False, True, True), (True, False, True), (True, True, False)]
    prompt = default.encode_prompt(COMMENT, options).ids
    for seed in (0, 1):
        expected = plain_loop(default, prompt, options, seed)
        for generator in variants:
            assert tokens(generator, prompt, options, seed) == expected


def test_candidates_that_end_early_leave_the_batch_without_changing_the_others(bundle_dir) -> None:
    """Finished candidates stop decoding: as one sequence they add no more tokens; as batch rows their rows leave the
    cache (moved up inside the buffers in place, or copied); the others' tokens are those they get running on."""
    options = GenerationOptions(candidates=5, max_new_tokens=12, min_new_tokens=0, temperature=1.3, top_k=20)
    spec = open_generator(bundle_dir).spec
    prompt = open_generator(bundle_dir).encode_prompt(COMMENT, options).ids
    full = tokens(open_generator(bundle_dir), prompt, options, 0)
    # two tokens the rows sampled made EOS, so rows end at different steps
    ending = replace(spec, eos_token_ids=(*spec.eos_token_ids, full[0][0][3], full[2][0][6]))
    runs = [
        tokens(open_generator(bundle_dir, ending), prompt, options, 0),
        tokens(open_generator(bundle_dir, ending, one_sequence=False), prompt, options, 0),
        tokens(open_generator(bundle_dir, replace(ending, kv_cache="concat"), one_sequence=False), prompt, options, 0),
    ]
    finishes = [finish for _, finish in runs[0]]
    assert "eos" in finishes and "length" in finishes, finishes  # rows left mid-run, others ran on
    assert runs[1] == runs[0] and runs[2] == runs[0]
    for (ended, finish), (ran, _) in zip(runs[0], full):
        assert ended == ran[: len(ended)]  # up to its end, each row is what it was with nothing ending
        assert finish == "length" or ran[len(ended)] in ending.eos_token_ids


def test_a_reply_on_the_last_replys_spare_buffers_gives_the_tokens_of_fresh_ones(bundle_dir) -> None:
    """A decode leaves its cache buffers for the next; a shorter prompt then runs in longer, used buffers, with the
    tokens of new zeroed ones (`spare_bytes=0` keeps no spare)."""
    options = GenerationOptions(candidates=4, max_new_tokens=10, min_new_tokens=10, temperature=1.3, top_k=20)
    spared, fresh = open_generator(bundle_dir), open_generator(bundle_dir, spare_bytes=0)
    short, long = spared.encode_prompt("pasta?", options).ids, spared.encode_prompt(COMMENT * 3, options).ids
    tokens(spared, long, options, 5)
    assert spared.spares and not fresh.spares
    for seed in (2, 3):
        assert tokens(spared, short, options, seed) == tokens(fresh, short, options, seed)
        tokens(spared, long, options, seed)


@pytest.mark.parametrize("options", [SEEDED, GenerationOptions(candidates=4, max_new_tokens=12, min_new_tokens=3, temperature=0.8, top_k=10, top_p=0.9)])
def test_the_graphs_top_logits_give_the_tokens_of_searching_the_whole_vocabulary(bundle_dir, options, monkeypatch) -> None:
    """A decode step's top_k logits from the graph (export.quantize.prune_lm_head) stand in for the sampling's own
    search of the vocabulary, which then runs only on the prefill's logits; the tokens and finishes are the same."""
    searches = []  # one entry for each search of the whole vocabulary
    monkeypatch.setattr(replyrank.sampling, "top_k", lambda logits, k, search=replyrank.sampling.top_k: searches.append(k) or search(logits, k))
    graph, searched = open_generator(bundle_dir), open_generator(bundle_dir, graph_top_k=False)
    prompt = graph.encode_prompt(COMMENT, options).ids
    from_graph = [tokens(graph, prompt, options, seed, reuse_prefix=True) for seed in (0, 1)]
    assert len(searches) == 2  # the first step of each (the prefill's logits) alone
    assert from_graph == [tokens(searched, prompt, options, seed, reuse_prefix=True) for seed in (0, 1)]
    assert len(searches) > 2 + 2


def step_logits(generator: Generator, prompt: list[int], tokens: np.ndarray, drop_at: int) -> list[np.ndarray]:
    """Each step's logits for `tokens` (rows, steps) through `Candidates`; row 1 stops after step `drop_at`."""
    _, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    rows, steps = tokens.shape
    candidates = Candidates(generator, len(prompt), cache, rows, steps)
    assert candidates.one_sequence is generator.one_sequence
    out = []
    for step in range(steps):
        if step == drop_at:
            candidates.keep([p for p, row in enumerate(candidates.rows) if row != 1])
        out.append(candidates.step(tokens[candidates.rows, step]).copy())
    return out


@pytest.mark.parametrize("bundle", ["llama_fp32_bundle", "gpt2_fp32_bundle"])
def test_one_sequence_gives_the_logits_of_batch_rows(bundle, request) -> None:
    together, apart = open_generator(request.getfixturevalue(bundle)), open_generator(request.getfixturevalue(bundle), one_sequence=False)
    prompt = together.encode_prompt(COMMENT, GenerationOptions()).ids
    steps = np.random.default_rng(0).integers(5, together.vocab, (4, 6))
    one, rows = step_logits(together, prompt, steps, drop_at=3), step_logits(apart, prompt, steps, drop_at=3)
    assert [a.shape for a in one] == [(4, together.vocab)] * 3 + [(3, together.vocab)] * 3
    for a, b in zip(one, rows):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_one_sequence_holds_the_prompt_once_while_it_fits_the_context(llama_bundle) -> None:
    generator = open_generator(llama_bundle)
    prompt = generator.encode_prompt(COMMENT, GenerationOptions()).ids
    _, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    assert Candidates(generator, len(prompt), cache, 5, 8).kv_cache.shape == (1, generator.kv_heads, len(prompt) + 5 * 8, generator.head_dim)
    # a sequence longer than the model's context (its rotary tables) falls back to one batch row per candidate
    rows = generator.context_length // 8
    candidates = Candidates(generator, len(prompt), cache, rows, 8)
    assert not candidates.one_sequence and candidates.kv_cache.shape[0] == rows


# ---------------------------------------------------------------- the template prefix's cache


def with_template(bundle_dir: Path, out: Path, template: str, bos_token_id: int | None = None) -> Path:
    shutil.copytree(bundle_dir, out)
    bundle = Bundle.read(out)
    replace(bundle, generator=replace(bundle.generator, prompt_template=template, bos_token_id=bos_token_id)).write(out)
    return out


@pytest.fixture(scope="module", params=["gpt2_bundle", "llama_bundle", "llama_fp32_bundle"])
def few_shot_bot(request, tmp_path_factory):
    folder = with_template(request.getfixturevalue(request.param), tmp_path_factory.mktemp("few-shot") / "bundle", FEW_SHOT, 0)
    return replyrank.load(folder, realism_threshold=0.0)


@pytest.mark.parametrize("options", [PREFIX_GREEDY, PREFIX_SAMPLED], ids=["greedy", "seeded"])
def test_prefix_cache_gives_the_tokens_of_a_full_prefill(few_shot_bot, options) -> None:
    generator = few_shot_bot.generator
    prompt = generator.encode_prompt(COMMENT, options).ids
    assert generator.prefix_cache is not None and generator.cached_prefix_length(prompt) == len(generator.prefix_ids) > 40
    for seed in (0, 1, 2):
        assert tokens(generator, prompt, options, seed, True) == tokens(generator, prompt, options, seed, False)


def test_prefix_cache_logits_and_cache_match_a_full_prefill(few_shot_bot) -> None:
    generator = few_shot_bot.generator
    prompt = generator.encode_prompt(COMMENT, PREFIX_GREEDY).ids
    cached = len(generator.prefix_ids)
    full_logits, full_cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    logits, cache = generator.forward(np.array([prompt[cached:]]), cached, generator.prefix_cache)
    np.testing.assert_allclose(logits[:, -1], full_logits[:, -1], atol=1e-5)
    for name in generator.past_names:
        np.testing.assert_allclose(cache[name].numpy(), full_cache[name].numpy(), atol=1e-5)


def test_the_prefix_cache_is_shared_by_threads_and_never_written(few_shot_bot) -> None:
    generator = few_shot_bot.generator
    before = {name: value.numpy().copy() for name, value in generator.prefix_cache.items()}
    alone = [few_shot_bot.reply(COMMENT, PREFIX_SAMPLED, seed=seed) for seed in range(6)]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda seed: few_shot_bot.reply(COMMENT, PREFIX_SAMPLED, seed=seed), range(6)))
    assert [[c.text for c in r.candidates] for r in together] == [[c.text for c in r.candidates] for r in alone]
    for name, value in generator.prefix_cache.items():
        assert np.array_equal(value.numpy(), before[name])


def test_prompts_without_the_prefix_prefill_in_full(few_shot_bot) -> None:
    generator = few_shot_bot.generator
    other = generator.tokenizer.encode("comment: " + COMMENT + "\nreply:").ids
    assert generator.cached_prefix_length(other) == 0
    assert generator.cached_prefix_length(generator.prefix_ids) == 0  # nothing left to prefill: no cache use
    assert tokens(generator, other, PREFIX_GREEDY, 0, True) == tokens(generator, other, PREFIX_GREEDY, 0, False)


@pytest.mark.parametrize("bundle", ["gpt2_bundle", "llama_bundle"])
def test_an_empty_prefix_still_works(bundle, request, tmp_path) -> None:
    folder = with_template(request.getfixturevalue(bundle), tmp_path / "bundle", "{comment}\nreply:")
    bot = replyrank.load(folder, realism_threshold=0.0)
    assert bot.generator.prefix_ids == [] and bot.generator.prefix_cache is None
    prompt = bot.generator.encode_prompt(COMMENT, PREFIX_GREEDY).ids
    assert bot.generator.cached_prefix_length(prompt) == 0
    result = bot.reply(COMMENT, PREFIX_SAMPLED, seed=4)
    assert len(result.candidates) == PREFIX_SAMPLED.candidates and result.prompt_tokens == len(prompt)
    assert [c.text for c in result.candidates] == [c.text for c in bot.reply(COMMENT, PREFIX_SAMPLED, seed=4).candidates]
