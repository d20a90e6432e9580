"""What a Bot promises, on tiny exported bundles: sampling, sharing the prefill, scoring, selection, and the CLI over it.

What it does with hostile input, broken bundles, threads and long runs is in test_robustness.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

import replyrank
from replyrank.bundle import DISCRIMINATOR, Bundle
from replyrank.cli import main
from replyrank.generate import Candidates, GenerationOptions, Generator

COMMENT = "has anyone tried the pasta place near campus"


@pytest.fixture(scope="module", params=["gpt2_bundle", "llama_bundle"])
def bot(request):
    return replyrank.load(request.getfixturevalue(request.param), realism_threshold=0.0)


def test_import_does_not_pull_torch():
    code = "import sys, replyrank, replyrank.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_greedy_ignores_the_random_draws(bot):
    options = GenerationOptions(candidates=3, max_new_tokens=10, min_new_tokens=10, temperature=0)
    prompt = bot.generator.encode_prompt(COMMENT, options)
    rngs = [np.random.default_rng(i) for i in range(3)]
    generations, _ = bot.generator.generate(prompt.ids, options, rngs)
    # greedy ignores the random draws: every row is the same sequence
    assert len({g.token_ids for g in generations}) == 1 and len(generations[0].token_ids) == 10


def test_same_seed_same_candidates_different_seed_different(bot):
    a = bot.reply(COMMENT, candidates=4, max_new_tokens=12, seed=7)
    b = bot.reply(COMMENT, candidates=4, max_new_tokens=12, seed=7)
    c = bot.reply(COMMENT, candidates=4, max_new_tokens=12, seed=8)
    assert [x.text for x in a.candidates] == [x.text for x in b.candidates]
    assert sorted(x.text for x in a.candidates) != sorted(x.text for x in c.candidates)


@pytest.mark.parametrize("bundle", ["gpt2_fp32_bundle", "llama_fp32_bundle"])
def test_shared_prefill_equals_independent_runs(bundle, request):
    """Candidates decoded together sample the tokens each would sample alone. Checked at fp32: an int8 kernel
    may quantize a row's activations with its neighbours', so on some CPUs a sampled token can differ by a rounding."""
    bot = replyrank.load(request.getfixturevalue(bundle), realism_threshold=0.0)
    options = GenerationOptions(candidates=4, max_new_tokens=16, temperature=1.0, top_k=0)
    prompt = bot.generator.encode_prompt(COMMENT, options)
    seeds = np.random.SeedSequence(3).spawn(4)
    together, _ = bot.generator.generate(prompt.ids, options, [np.random.default_rng(s) for s in seeds])
    alone = [bot.generator.generate(prompt.ids, options, [np.random.default_rng(s)])[0][0] for s in seeds]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


@pytest.mark.parametrize("one_sequence", [True, False], ids=["one-sequence", "batch-rows"])
def test_in_place_cache_equals_a_grown_copy(llama_bundle, one_sequence):
    """The fused graph's cache buffer, written in place (the bundle's `kv_cache: "in-place"`), gives the logits and the
    tokens that a cache copied and grown every step (`"concat"`) gives, also where rows leave the batch early."""
    bundle = Bundle.read(llama_bundle)
    spec = bundle.generator
    assert spec.kv_cache == "in-place"
    in_place, copied = (Generator(bundle.folder(spec), s, one_sequence=one_sequence) for s in (spec, replace(spec, kv_cache="concat")))
    prompt = in_place.encode_prompt(COMMENT, GenerationOptions()).ids
    tokens = np.array([5, 9, 17], dtype=np.int64)

    def steps(generator: Generator) -> list[np.ndarray]:
        _, cache = generator.forward(np.array([prompt]), 0, generator.empty_cache(1))
        candidates = Candidates(generator, len(prompt), cache, rows=3, max_new_tokens=6)
        # an in-place step writes its logits into a buffer of the candidates' that the next step overwrites: copy
        return [candidates.step(tokens + step).copy() for step in range(6)]

    for a, b in zip(steps(in_place), steps(copied)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    options = GenerationOptions(candidates=6, max_new_tokens=24, temperature=1.5, top_k=0)
    first = in_place.generate(prompt, options, [np.random.default_rng(i) for i in range(6)])[0]
    # stop at row 0's first character, so rows leave the batch early and the buffer gets cut
    options = replace(options, stop=(first[0].text[0],))
    runs = [generator.generate(prompt, options, [np.random.default_rng(i) for i in range(6)])[0] for generator in (in_place, copied)]
    assert [g.token_ids for g in runs[0]] == [g.token_ids for g in runs[1]]
    assert runs[0][0].finish_reason == "stop" and any(g.finish_reason == "length" for g in runs[0])


def test_eos_stops_a_row_and_min_new_tokens_holds_it_back(bot):
    options = GenerationOptions(candidates=6, max_new_tokens=30, min_new_tokens=5, temperature=1.5, top_k=0)
    prompt = bot.generator.encode_prompt(COMMENT, options)
    generations, _ = bot.generator.generate(prompt.ids, options, [np.random.default_rng(i) for i in range(6)])
    for g in generations:
        assert len(g.token_ids) >= 5
        assert g.finish_reason in {"eos", "length"}
        assert (g.finish_reason == "length") == (len(g.token_ids) == 30)
        assert not set(g.token_ids) & set(bot.generator.spec.eos_token_ids)


def test_top_k_one_is_greedy(bot):
    greedy = bot.reply(COMMENT, candidates=2, max_new_tokens=8, temperature=0, seed=1)
    top1 = bot.reply(COMMENT, candidates=2, max_new_tokens=8, temperature=1.0, top_k=1, seed=2)
    assert {c.text for c in greedy.candidates} == {c.text for c in top1.candidates}


def test_a_replys_scores_do_not_depend_on_the_replies_beside_it(bot):
    # the int8 scorers quantize a run's activations with one scale: pairs sharing a run would move each other
    replies = ["the pasta place is great", "no", "I went there last week and the portions were huge, worth the walk"]
    together = bot.scorers(COMMENT, replies)
    for i, reply in enumerate(replies):
        alone = bot.scorers(COMMENT, [reply])
        for name, scores in together.items():
            assert alone[name][0] == scores[i]


def test_scores_are_in_range_and_sorted(bot):
    result = bot.reply(COMMENT, candidates=6, max_new_tokens=10, seed=1)
    assert len(result.candidates) == 6
    scored = [c for c in result.candidates if c.realism is not None]
    assert scored and all(0 <= c.realism <= 1 and np.isfinite(c.upvotes) for c in scored)
    kept = [c.pick_score for c in result.candidates if c.kept]
    assert kept == sorted(kept, reverse=True)
    for c in scored:  # a tiny bundle measured no upvote signal: every chance is 0.5, realism decides
        assert c.upvote_chance == 0.5 and c.pick_score == pytest.approx(c.realism * 0.5)
    assert result.best == result.candidates[0]
    assert result.why and result.why.startswith(f"realism {result.best.realism:.3f}")
    assert set(result.timings_ms) == {"prefill", "decode", "score", "total"}


def test_selection_drops_empty_duplicates_echoes_and_unrealistic(gpt2_bundle):
    bot = replyrank.load(gpt2_bundle, realism_threshold=0.0)
    ranked = bot.score(COMMENT, ["yes it was fine", "Yes it  was fine", "", COMMENT.upper(), "no idea"])
    reasons = {c.text: c.reason for c in ranked.candidates}
    assert reasons["Yes it  was fine"] == "duplicate" and reasons[""] == "empty"
    assert reasons[COMMENT.upper()] == "echoes the comment"
    assert reasons["yes it was fine"] is None and reasons["no idea"] is None
    strict = replyrank.load(gpt2_bundle, realism_threshold=1.0, strict=True)
    result = strict.reply(COMMENT, candidates=2, max_new_tokens=6, seed=1)
    assert result.best is None and "threshold" in result.reason and result.note is None
    assert all(not c.kept for c in result.candidates)


def test_when_none_is_realistic_enough_the_most_realistic_is_kept_and_said(gpt2_bundle):
    bot = replyrank.load(gpt2_bundle, realism_threshold=1.0)
    result = bot.reply(COMMENT, candidates=4, max_new_tokens=6, seed=1)
    scored = [c for c in result.candidates if c.realism is not None]
    assert result.best is not None and result.reason is None
    assert result.best.realism == max(c.realism for c in scored)
    assert [c for c in result.candidates if c.kept] == [result.best]
    assert "threshold 1.000" in result.note and f"({result.best.realism:.3f})" in result.note
    assert all("< threshold" in c.reason for c in scored if c is not result.best)
    assert result.to_dict()["note"] == result.note
    ranked = bot.score(COMMENT, ["yes it was fine", "no idea"])
    assert sum(c.kept for c in ranked.candidates) == 1 and ranked.best is ranked.candidates[0]
    assert ranked.note == f"no candidate reached the realism threshold 1.000; kept the most realistic one ({ranked.best.realism:.3f})"


@pytest.mark.parametrize(
    "options,message",
    [
        ({"candidates": 0}, "candidates"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_options_are_input_errors(gpt2_bundle, options, message):
    bot = replyrank.load(gpt2_bundle)
    with pytest.raises(replyrank.InputError, match=message):
        bot.reply(COMMENT, **options)


def test_cli_json_matches_the_api(gpt2_bundle):
    runner = CliRunner()
    out = runner.invoke(main, ["reply", COMMENT, "--bundle", str(gpt2_bundle), "-n", "3", "--max-new-tokens", "8", "--seed", "5", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    api = replyrank.load(gpt2_bundle).reply(COMMENT, candidates=3, max_new_tokens=8, seed=5).to_dict()
    assert data["candidates"] == api["candidates"] and data["best"] == api["best"]
    assert set(data["timings_ms"]) == {"prefill", "decode", "score", "total"}


def test_reply_and_rank_json_share_the_shipped_schema(gpt2_bundle):
    import importlib.resources

    import jsonschema

    schema = json.loads((importlib.resources.files("replyrank") / "result.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    runs = {
        "reply": ["reply", COMMENT, "-n", "3", "--max-new-tokens", "6", "--seed", "1"],
        "reply, none realistic": ["reply", COMMENT, "-n", "2", "--max-new-tokens", "6", "--seed", "1", "--threshold", "1"],
        "reply, strict": ["reply", COMMENT, "-n", "2", "--max-new-tokens", "6", "--seed", "1", "--threshold", "1", "--strict"],
        "rank": ["rank", "--comment", COMMENT, "yes it was fine", "", "yes it was fine", "no idea"],
        "rank, strict": ["rank", "--comment", COMMENT, "yes", "no idea", "--threshold", "1", "--strict"],
    }
    shapes = set()
    for name, args in runs.items():
        out = CliRunner().invoke(main, [*args, "--bundle", str(gpt2_bundle), "--json"])
        assert out.exit_code == 0, (name, out.output)
        data = json.loads(out.stdout)
        jsonschema.validate(data, schema)
        shapes.add(tuple(data))
    assert len(shapes) == 1  # one schema, one set of keys, whichever command wrote it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**data, "candidates": [{"text": "x"}]}, schema)


def test_cli_says_when_no_candidate_reached_the_threshold(gpt2_bundle):
    args = ["reply", COMMENT, "--bundle", str(gpt2_bundle), "-n", "2", "--max-new-tokens", "6", "--seed", "1", "--threshold", "1"]
    kept = CliRunner().invoke(main, args)
    assert kept.exit_code == 0 and "no candidate reached the realism threshold 1.000" in kept.stderr
    assert not kept.stdout.startswith("(no reply")
    strict = CliRunner().invoke(main, [*args, "--strict"])
    assert strict.exit_code == 0 and strict.stdout.startswith("(no reply: no candidate passed selection")
    ranked = CliRunner().invoke(main, ["rank", "--comment", COMMENT, "yes", "no idea", "--bundle", str(gpt2_bundle), "--threshold", "1", "--json"])
    data = json.loads(ranked.stdout)
    assert data["best"] is not None and "threshold 1.000" in data["note"]
    strict_rank = CliRunner().invoke(main, ["rank", "--comment", COMMENT, "yes", "no idea", "--bundle", str(gpt2_bundle), "--threshold", "1", "--strict", "--json"])
    assert json.loads(strict_rank.stdout)["best"] is None and json.loads(strict_rank.stdout)["note"] is None


def test_cli_rank_info_and_stdin(gpt2_bundle):
    runner = CliRunner()
    ranked = runner.invoke(main, ["rank", "--comment", "-", "yes", "no idea", "--bundle", str(gpt2_bundle), "--json"], input=COMMENT)
    assert ranked.exit_code == 0, ranked.output
    data = json.loads(ranked.stdout)
    assert data["comment"] == COMMENT and len(data["candidates"]) == 2
    info = runner.invoke(main, ["info", "--bundle", str(gpt2_bundle), "--json"])
    data = json.loads(info.stdout)
    assert data["path"] == str(gpt2_bundle.resolve()) and data["manifest"]["format_version"] == 2
    assert "generator_quantized_vs_fp32" in data["validation"] and data["sizes"]["generator/model.onnx"] > 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["reply", "  "], "empty"),
        (["reply", "hi", "-n", "0"], "candidates"),
        (["reply", "hi", "--top-p", "2"], "top_p"),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(gpt2_bundle, args, message):
    result = CliRunner().invoke(main, [*args, "--bundle", str(gpt2_bundle)])
    assert result.exit_code != 0
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_default_bundle_from_an_earlier_recipe_says_how_to_rebuild(gpt2_bundle, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from replyrank.bundle import MANIFEST

    from replyrank.locations import DEFAULT_RECIPE
    from replyrank.cli import main

    cached = tmp_path / "cache" / "replyrank" / "default-bundle"
    shutil.copytree(gpt2_bundle, cached)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REPLYRANK_BUNDLE", raising=False)
    args = ["reply", "hello there", "--candidates", "2", "--max-new-tokens", "3", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "earlier recipe" in result.stderr and "build-default --force" in result.stderr
    json.loads(result.stdout)  # the reply itself is unchanged: data on stdout, the note on stderr
    with pytest.warns(UserWarning, match="build-default --force"):
        replyrank.load()
    monkeypatch.setenv("REPLYRANK_BUNDLE", str(cached))  # a bundle the user named is theirs: no note
    assert "earlier recipe" not in CliRunner().invoke(main, args).stderr
    monkeypatch.delenv("REPLYRANK_BUNDLE")
    manifest = json.loads((cached / MANIFEST).read_text())
    manifest["training"] = {**(manifest.get("training") or {}), "default_recipe": DEFAULT_RECIPE}
    (cached / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "earlier recipe" not in result.stderr
