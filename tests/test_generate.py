"""The template prefix's KV cache, prefilled once per Generator: the same tokens as a full prefill, for both cache kinds."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

import replyrank
from replyrank.bundle import Bundle
from replyrank.generate import GenerationOptions, candidate_rngs

COMMENT = "has anyone tried the pasta place near campus"
# a few-shot prefix, as the default bundle's template may carry: long enough that reusing it matters
FEW_SHOT = "".join(f"comment: {a}\nreply: {b}\n" for a, b in [
    ("what do you think about the new library in town", "i think it is great and the coffee is good too"),
    ("how many hours a week do you study for finals", "too many honestly, i need a break and some sleep"),
]) + "comment: {comment}\nreply:"
GREEDY = GenerationOptions(candidates=3, max_new_tokens=16, temperature=0)
SAMPLED = GenerationOptions(candidates=5, max_new_tokens=20, temperature=1.2, top_k=0, top_p=0.95, repetition_penalty=1.2)


def with_template(bundle_dir, out, template: str, bos_token_id: int | None = None):
    shutil.copytree(bundle_dir, out)
    bundle = Bundle.read(out)
    replace(bundle, generator=replace(bundle.generator, prompt_template=template, bos_token_id=bos_token_id)).write(out)
    return out


@pytest.fixture(scope="module", params=["gpt2_bundle", "llama_bundle", "llama_fp32_bundle"])
def few_shot_bot(request, tmp_path_factory):
    folder = with_template(request.getfixturevalue(request.param), tmp_path_factory.mktemp("few-shot") / "bundle", FEW_SHOT, 0)
    return replyrank.load(folder, realism_threshold=0.0)


def tokens(generator, prompt_ids, options, seed, reuse_prefix):
    generations, _ = generator.generate(prompt_ids, options, candidate_rngs(seed, options.candidates), reuse_prefix=reuse_prefix)
    return [g.token_ids for g in generations]


@pytest.mark.parametrize("options", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_prefix_cache_gives_the_tokens_of_a_full_prefill(few_shot_bot, options) -> None:
    generator = few_shot_bot.generator
    prompt = generator.encode_prompt(COMMENT, options).ids
    assert generator.prefix_cache is not None and generator.cached_prefix_length(prompt) == len(generator.prefix_ids) > 40
    for seed in (0, 1, 2):
        assert tokens(generator, prompt, options, seed, True) == tokens(generator, prompt, options, seed, False)


def test_prefix_cache_logits_and_cache_match_a_full_prefill(few_shot_bot) -> None:
    generator = few_shot_bot.generator
    prompt = generator.encode_prompt(COMMENT, GREEDY).ids
    cached = len(generator.prefix_ids)
    full_logits, full_cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
    logits, cache = generator.forward(np.array([prompt[cached:]]), cached, generator.prefix_cache)
    np.testing.assert_allclose(logits[:, -1], full_logits[:, -1], atol=1e-5)
    for name in generator.past_names:
        np.testing.assert_allclose(cache[name].numpy(), full_cache[name].numpy(), atol=1e-5)


def test_the_prefix_cache_is_shared_by_threads_and_never_written(few_shot_bot) -> None:
    generator = few_shot_bot.generator
    before = {name: value.numpy().copy() for name, value in generator.prefix_cache.items()}
    alone = [few_shot_bot.reply(COMMENT, SAMPLED, seed=seed) for seed in range(6)]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda seed: few_shot_bot.reply(COMMENT, SAMPLED, seed=seed), range(6)))
    assert [[c.text for c in r.candidates] for r in together] == [[c.text for c in r.candidates] for r in alone]
    for name, value in generator.prefix_cache.items():
        assert np.array_equal(value.numpy(), before[name])


def test_prompts_without_the_prefix_prefill_in_full(few_shot_bot) -> None:
    generator = few_shot_bot.generator
    other = generator.tokenizer.encode("comment: " + COMMENT + "\nreply:").ids
    assert generator.cached_prefix_length(other) == 0
    assert generator.cached_prefix_length(generator.prefix_ids) == 0  # nothing left to prefill: no cache use
    assert tokens(generator, other, GREEDY, 0, True) == tokens(generator, other, GREEDY, 0, False)


@pytest.mark.parametrize("bundle", ["gpt2_bundle", "llama_bundle"])
def test_an_empty_prefix_still_works(bundle, request, tmp_path) -> None:
    folder = with_template(request.getfixturevalue(bundle), tmp_path / "bundle", "{comment}\nreply:")
    bot = replyrank.load(folder, realism_threshold=0.0)
    assert bot.generator.prefix_ids == [] and bot.generator.prefix_cache is None
    prompt = bot.generator.encode_prompt(COMMENT, GREEDY).ids
    assert bot.generator.cached_prefix_length(prompt) == 0
    result = bot.reply(COMMENT, SAMPLED, seed=4)
    assert len(result.candidates) == SAMPLED.candidates and result.prompt_tokens == len(prompt)
    assert [c.text for c in result.candidates] == [c.text for c in bot.reply(COMMENT, SAMPLED, seed=4).candidates]
