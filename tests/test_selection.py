"""The selection rule on constructed cases: pick_score = realism × sigmoid(k·(upvotes − median))."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import replyrank
from replyrank.bot import upvote_chance
from replyrank.generate import whole_sentences
from replyrank.bundle import DISCRIMINATOR, UPVOTES


def test_upvote_chance_by_hand() -> None:
    u = np.array([0.0, 1.0, 3.0])  # median 1
    assert upvote_chance(u, None).tolist() == [0.5, 0.5, 0.5]  # unmeasured: no weight
    assert upvote_chance(u, 0.0).tolist() == [0.5, 0.5, 0.5]  # measured nil
    assert upvote_chance(u, 2.0) == pytest.approx([1 / (1 + np.e**2), 0.5, 1 / (1 + np.e**-4)])


def test_a_cut_off_reply_ends_at_its_last_whole_sentence() -> None:
    assert whole_sentences("I agree. It is hard to say what the") == "I agree."
    assert whole_sentences('Yes!! He said "no." Then they') == 'Yes!! He said "no."'
    assert whole_sentences("First line\nsecond line is about") == "First line"
    assert whole_sentences("1. Be prepared. 2.") == "1. Be prepared."  # not the next list number
    assert whole_sentences("no sentence ended in 3.5 hours of") == "no sentence ended in 3.5 hours of"  # nothing to cut at


def test_generations_cut_only_where_they_hit_the_token_limit(gpt2_bundle) -> None:
    bot = replyrank.load(gpt2_bundle, realism_threshold=0.0)
    generator = bot.generator
    cut_seen = False
    for seed in range(20):
        options = replace(bot.sampling, max_new_tokens=16, seed=seed)
        for g in generator.sample("What should I do? Tell me.", options).generations:
            whole = generator.tokenizer.decode(list(g.token_ids), skip_special_tokens=True).strip()
            assert g.text == (whole_sentences(whole) if g.finish_reason == "length" else whole)
            cut_seen |= g.text != whole
        if cut_seen:
            break
    assert cut_seen, "no seed gave a candidate to cut"
    # reply and the training side's fakes read the same texts (Generation.text)
    assert sorted(c.text for c in bot.reply("What should I do? Tell me.", options).candidates) == sorted(
        g.text for g in generator.sample("What should I do? Tell me.", options).generations)


def bot_with(bundle_dir, scores: dict[str, list[float]], pairwise_scale: float | None, threshold: float = 0.0):
    bot = replyrank.load(bundle_dir, realism_threshold=threshold)
    bot.bundle = replace(bot.bundle, upvotes=replace(bot.bundle.upvotes, pairwise_scale=pairwise_scale))
    bot.scorers = lambda comment, replies, names=None: {name: np.array(values[: len(replies)]) for name, values in scores.items()}
    return bot


REPLIES = ["Bartering college is not just about money.", "The thing you need to do is to be prepared.", "lol"]


def test_a_nil_upvote_signal_cannot_override_realism(gpt2_bundle) -> None:
    # the README's old case: engagement differs by 0.09, realism by 0.95
    scores = {DISCRIMINATOR: [0.029, 0.975, 0.5], UPVOTES: [5.09, 5.00, 4.0]}
    for k in (None, 0.0):
        result = bot_with(gpt2_bundle, scores, k).score("What should I do?", REPLIES)
        assert result.best.text == REPLIES[1]
        assert [c.upvote_chance for c in result.candidates] == [0.5, 0.5, 0.5]
    # with a measured, modest scale the 0.09 difference still cannot buy 0.95 of realism
    assert bot_with(gpt2_bundle, scores, 0.7).score("What should I do?", REPLIES).best.text == REPLIES[1]


def test_a_measured_upvote_signal_decides_between_realistic_replies(gpt2_bundle) -> None:
    scores = {DISCRIMINATOR: [0.80, 0.90, 0.85], UPVOTES: [3.0, 0.0, 1.0]}
    realism_only = bot_with(gpt2_bundle, scores, None).score("What should I do?", REPLIES)
    assert realism_only.best.text == REPLIES[1]
    weighted = bot_with(gpt2_bundle, scores, 1.0).score("What should I do?", REPLIES)
    assert weighted.best.text == REPLIES[0]  # 0.80 × σ(2) = 0.704 beats 0.85 × 0.5 and 0.90 × σ(-1)
    best = weighted.best
    assert best.upvote_chance == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert best.pick_score == pytest.approx(0.80 * best.upvote_chance)
    assert [c.text for c in weighted.candidates] == [REPLIES[0], REPLIES[2], REPLIES[1]]
    assert weighted.why == (
        f"realism 0.800 × upvote chance {best.upvote_chance:.3f} = {best.pick_score:.3f}; next best 0.850 × 0.500 = 0.425"
    )


def test_the_threshold_still_comes_first(gpt2_bundle) -> None:
    scores = {DISCRIMINATOR: [0.30, 0.90, 0.85], UPVOTES: [9.0, 0.0, 1.0]}
    result = bot_with(gpt2_bundle, scores, 5.0, threshold=0.5).score("What should I do?", REPLIES)
    assert result.best.text == REPLIES[2]  # the 9.0 reply is below the realism threshold
    dropped = next(c for c in result.candidates if c.text == REPLIES[0])
    assert not dropped.kept and dropped.reason.startswith("realism 0.300 < threshold")


def test_score_refuses_more_replies_than_the_limit(gpt2_bundle) -> None:
    from replyrank.errors import InputError
    from replyrank.generate import MAX_REPLIES

    with pytest.raises(InputError, match=f"at most {MAX_REPLIES} replies"):
        replyrank.load(gpt2_bundle).score("What should I do?", ["a reply"] * (MAX_REPLIES + 1))
