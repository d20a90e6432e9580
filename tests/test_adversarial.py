"""Adversarial rounds (`replyrank train adversarial`): figures, the judge, best-of-N and DPO selection, and a real
two-round run on a slice of Reddit with tiny models, interrupted in its last round and resumed."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny import REDDIT

import replyrank
from replyrank.cli import main
from replyrank.export import adversarial, rankers
from replyrank.export.adversarial import AdversarialOptions, distill, preferences
from replyrank.export.adversarial_judge import Judge, PairScorer, fit_logistic
from replyrank.export.adversarial_metrics import CopyIndex, distinct_n
from replyrank.metrics import roc_auc

DUMPS = [REDDIT / "college" / "RS_CollegeAdvice.zst", REDDIT / "college" / "RC_CollegeAdvice.zst"]
FIGURES = (
    "fresh_discriminator_auc", "round0_discriminator_auc", "reply_perplexity", "distinct2_candidates", "distinct2_real",
    "copy_share", "mean_predicted_upvotes", "share_kept", "distinct2_one_per_comment", "distinct2_real_same_comments",
    "fresh_pair_model_auc", "length_baseline_auc", "judge",
)


@pytest.fixture(scope="module")
def upvote_scorer(models, tmp_path_factory) -> Path:
    """A two-head pair model (what `train upvotes` writes) with an untrained upvote head and a measured scale."""
    model, tokenizer = rankers.build_model(str(models["disc"]))
    return rankers.save(model, tokenizer, tmp_path_factory.mktemp("upvotes") / "scorer", {"heads": {"upvotes": {"bt_scale": 1.0}}})


def tiny_rounds(models, out, *extra: str) -> list[str]:
    """`train adversarial` of the tiny models on the CollegeAdvice slice, a few steps a round."""
    args = ["train", "adversarial", "--generator", str(models["gpt2"]), "--discriminator-base", str(models["disc"]), "--out", str(out),
            "--fakes", "16", "--tune-comments", "8", "--held-out-comments", "6", "--candidates", "2", "--max-steps", "2",
            "--batch-size", "4", "--max-length", "48", "--device", "cpu", "--lora-rank", "4", *extra]
    for dump in DUMPS:
        args += ["--data", str(dump)]
    return args


def test_distinct_2_counts_distinct_word_bigrams():
    assert distinct_n(["a b a b"]) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b", "a b"]) == 0.5
    assert distinct_n(["one"]) == 0.0


def test_a_copy_shares_eight_consecutive_words_with_a_training_reply():
    index = CopyIndex(["Honestly, the best thing you can do is talk to your advisor about it."], 8)
    assert index.copies("I agree: the best thing you can do is talk to your advisor first")
    assert not index.copies("the best thing you can do is sleep")  # 7 words in a row of the reply's
    assert not index.copies("Honestly")  # shorter than 8 words: copies nothing


def test_logistic_regression_recovers_the_weights_it_was_drawn_from():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 2)) * [1.0, 5.0] + [0.0, 3.0]  # unstandardized columns
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x @ [2.0, -0.4] + 0.5)))).astype(float)
    assert fit_logistic(x, y, l2=0.0) == pytest.approx([2.0, -0.4, 0.5], abs=0.15)


class NoisePairModel:
    """A pair model that cannot tell anything: P(human) is noise."""

    def scores(self, pairs):
        return np.random.default_rng(len(pairs)).uniform(0.2, 0.8, len(pairs))


def test_the_judge_sees_what_length_sees_where_its_pair_model_is_blind():
    rng = np.random.default_rng(1)

    def replies(mean_words, count):
        return [("a comment", " ".join(["word"] * max(1, int(n)))) for n in rng.normal(mean_words, 2, count)]

    # real replies are mid-length; the generator's are too short or too long, which no linear rule on length tells
    real, fake = replies(12, 300), replies(3, 150) + replies(30, 150)
    judge, record = Judge.fit(NoisePairModel(), real[:200], fake[:100] + fake[150:250])
    test_real, test_fake = real[200:], fake[100:150] + fake[250:]
    labels = [1] * len(test_real) + [0] * len(test_fake)
    assert roc_auc(labels, judge.scores(test_real + test_fake)) > 0.95
    assert roc_auc(labels, NoisePairModel().scores(test_real + test_fake)) < 0.65
    assert record["real"] == 200 and record["generated"] == 200 and len(record["length_weights"]) == 3
    with pytest.raises(replyrank.export.convert.ExportError, match="too few held-back rows"):
        Judge.fit(NoisePairModel(), real[:1], fake[:5])


def test_best_of_n_keeps_the_most_realistic_candidate_per_comment_but_never_a_copy():
    index = CopyIndex(["go to office hours every single week and ask questions there"], 8)
    candidates = [("c1", "ok"), ("c1", "sure thing"), ("c2", "go to office hours every single week and ask"), ("c2", "nah")]
    realism = np.array([0.2, 0.7, 0.99, 0.1])
    picked = distill(candidates, realism, None, [("c1", "real one"), ("c2", "real two")], index, AdversarialOptions(real_mix=0.5))
    assert picked["pairs"] == [["c1", "sure thing"], ["c2", "nah"]]
    assert picked["real"] == [["c1", "real one"]]  # half a real pair per distilled candidate
    # with an upvote model, realism x sigmoid(u - median u): a reply must also be predicted to land
    upvotes = np.array([3.0, -3.0, 0.0, 0.0])
    assert distill(candidates, realism, upvotes, [], index, AdversarialOptions())["pairs"][0] == ["c1", "ok"]
    # the runtime's rule: an upvote model with no measured scale cannot override realism
    assert distill(candidates, realism, upvotes, [], index, AdversarialOptions(), upvote_scale=None)["pairs"][0] == ["c1", "sure thing"]


def test_dpo_prefers_each_comments_real_reply_over_its_least_human_candidate():
    candidates = [("c1", "ok"), ("c1", "sure thing"), ("c2", "nah"), ("c2", "real two"), ("c3", "what")]
    realism = np.array([0.2, 0.7, 0.9, 0.1, 0.05])
    picked = preferences(candidates, realism, [("c1", "real one"), ("c2", "real two")])
    # c2's least human candidate equals its real reply: the next one is taken; c3 has no real reply
    assert picked["preferences"] == [["c1", "real one", "ok"], ["c2", "real two", "nah"]]
    assert picked["stats"]["mean_realism_rejected"] == pytest.approx(0.55)


def test_dpo_raises_the_chosen_replies_likelihood_over_the_rejected_against_its_reference(models, tmp_path):
    from replyrank.export.convert import load_causal_lm
    from replyrank.export.train import TrainOptions, reply_logps, train_preference

    triples = [("is a gap year worth it", "yes if you work and save", "I am an AI assistant here to help you"),
               ("how do I pick a major", "take intro classes first", "I am an AI assistant here to help you")] * 4
    template = "{comment}\n"

    def margin(folder) -> float:
        model, tokenizer = load_causal_lm(str(folder))
        model.eval()
        rows = [(c, good) for c, good, _ in triples[:2]] + [(c, bad) for c, _, bad in triples[:2]]
        logps = reply_logps(model, tokenizer, template, rows, 48)
        return float((logps[:2] - logps[2:]).mean())

    options = TrainOptions(device="cpu", learning_rate=1e-3, batch_size=4, max_length=48, epochs=4, lora_rank=4)
    metrics = train_preference(triples, str(models["gpt2"]), tmp_path / "dpo", options, template, beta=0.5, nll_weight=0.1)
    assert metrics["objective"] == "dpo" and metrics["train_pairs"] == 8
    assert margin(tmp_path / "dpo") > margin(models["gpt2"]) + 0.5  # the reference is the model it started from
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "dpo" / "reference.pt").exists()
    with pytest.raises(replyrank.ReplyrankError, match="no usable preference pairs"):
        train_preference([("c", "same", "same")], str(models["gpt2"]), tmp_path / "none", options, template)


def test_length_normalized_dpo_compares_per_token_log_ratios():
    import torch
    from replyrank.export.train import dpo_margin

    # rows: [chosen, rejected]; the rejected reply is 10x as long, with the same per-token log-ratio
    logps, reference, counts = torch.tensor([-10.0, -100.0]), torch.tensor([-12.0, -120.0]), torch.tensor([5.0, 50.0])
    assert float(dpo_margin(logps, reference, counts, 0.1)[0]) == pytest.approx(0.1 * (2 - 20))  # length carries it
    assert float(dpo_margin(logps, reference, counts, 2.0, length_normalized=True)[0]) == pytest.approx(0.0)
    assert float(dpo_margin(torch.tensor([-9.0, -100.0]), reference, counts, 2.0, True)[0]) == pytest.approx(2.0 * (3 / 5 - 20 / 50))


def test_a_pair_scorer_reads_the_head_it_is_asked_for(models, upvote_scorer, tmp_path):
    model, tokenizer, _ = rankers.load(upvote_scorer)
    pairs = [("is a gap year worth it", "yes"), ("is a gap year worth it", "no idea, ask your advisor")]
    options = rankers.RankerOptions(device="cpu", max_length=64)
    realism, upvotes = rankers.predict(model, tokenizer, pairs, 64)
    assert np.allclose(PairScorer(upvote_scorer, options, head="upvotes").scores(pairs), upvotes, atol=1e-5)
    assert np.allclose(PairScorer(upvote_scorer, options).scores(pairs), realism, atol=1e-5)
    assert PairScorer(upvote_scorer, options).pairwise_scale == 1.0
    with pytest.raises(replyrank.ReplyrankError, match="is not a pair model"):
        PairScorer(models["upv"], options)  # a transformers regressor


def test_the_gpu_sampler_writes_the_runtimes_greedy_replies_and_is_seeded(models, llama_fp32_bundle):
    from replyrank.export.recipes import TorchSampler

    generator = replyrank.load(llama_fp32_bundle).generator
    comments = ["is a gap year worth it", "how do I pick a major when every class looks interesting to me"]
    sampler = TorchSampler(str(models["llama"]), generator.template, device="cpu", batch_rows=2)  # one comment a batch
    greedy = replace(generator.spec.sampling, temperature=0.0, candidates=2, max_new_tokens=8)
    runtime = [(c, g.text) for c in comments for g in generator.sample(c, greedy).generations if g.text]
    assert sampler.replies(comments, greedy) == runtime  # same prompt, same tokens as the fp32 graph
    sampled = replace(greedy, temperature=0.7, candidates=3)
    assert sampler.replies(comments, sampled, seed=5) == sampler.replies(comments, sampled, seed=5)


@pytest.mark.skipif(not DUMPS[0].exists(), reason="../shared/data/reddit is not there")
def test_two_rounds_interrupted_in_the_last_resume_there_and_reach_the_bundle(models, upvote_scorer, tmp_path, monkeypatch):
    out, work = tmp_path / "gen", tmp_path / "rounds"
    args = ["train", "adversarial", "--generator", str(models["gpt2"]), "--discriminator-base", str(models["disc"]),
            "--upvotes", str(upvote_scorer), "--rounds", "2", "--out", str(out), "--work", str(work), "--fakes", "16",
            "--tune-comments", "8", "--held-out-comments", "6", "--candidates", "2", "--max-steps", "2", "--batch-size", "4",
            "--max-length", "48", "--device", "cpu", "--lora-rank", "4"]
    for dump in DUMPS:
        args += ["--data", str(dump)]
    originals = {name: getattr(adversarial, name) for name in ("train_discriminator", "train_generator", "runtime_generator")}
    calls: dict[str, int] = {}

    def count(fail_on_discriminator: int | None = None) -> None:
        calls.update(train_discriminator=0, train_generator=0, runtime_generator=0)
        for name, function in originals.items():
            def counted(*a, _name=name, _function=function, **kw):
                calls[_name] += 1
                if _name == "train_discriminator" and calls[_name] == fail_on_discriminator:
                    raise RuntimeError("killed")  # the run dies here, as a killed process would
                return _function(*a, **kw)
            monkeypatch.setattr(adversarial, name, counted)

    # run 1 dies as round 2 starts training its discriminator (the third): after its fine-tune and its samples
    count(fail_on_discriminator=3)
    first = CliRunner().invoke(main, args)
    assert str(first.exception) == "killed"
    assert calls == {"train_discriminator": 3, "train_generator": 2, "runtime_generator": 3}
    assert not out.exists() and not (work / "round-2").exists()
    finished = {k: (work / f"round-{k}" / "round.json").stat().st_mtime_ns for k in (0, 1)}

    count()
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    # rounds 0 and 1 were not redone; round 2 kept its fine-tuned generator and its samples
    assert {k: (work / f"round-{k}" / "round.json").stat().st_mtime_ns for k in (0, 1)} == finished
    assert calls == {"train_discriminator": 1, "train_generator": 0, "runtime_generator": 0}

    report = json.loads(second.stdout)
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    assert report["rounds"] == rounds and [r["round"] for r in rounds] == [0, 1, 2]
    for figures in rounds:
        assert all(figures[name] is not None for name in FIGURES), figures
        assert 0 <= figures["fresh_discriminator_auc"] <= 1 and 0 <= figures["round0_discriminator_auc"] <= 1
        assert figures["reply_perplexity"] > 1 and 0 <= figures["copy_share"] <= 1 and 0 <= figures["share_kept"] <= 1
    assert rounds[0]["fine_tune"] is None and rounds[1]["fine_tune"]["train_pairs"] > 0
    # one LoRA adapter over the given generator, continued: round 2 trains round 1's further
    assert rounds[2]["fine_tune"]["from"] == str(models["gpt2"])
    assert rounds[2]["fine_tune"]["adapter_from"] == str(work / "round-1" / "generator" / "adapter")
    assert (work / "round-2" / "generator" / "adapter" / "adapter_config.json").is_file()
    assert [r["generator"] for r in rounds] == [str(models["gpt2"])] + [str(work / f"round-{k}" / "generator") for k in (1, 2)]
    assert all((work / f"round-{k}" / "generator" / "config.json").is_file() for k in (1, 2))
    assert rounds[0]["distilled"]["distilled"] > 0 and rounds[2]["distilled"] is None
    assert set(report["targets"]) >= {"fresh_discriminator_auc", "copy_share", "perplexity_ratio_to_round0"}
    plot = ElementTree.parse(out / "rounds.svg").getroot()
    assert len(plot.findall("{http://www.w3.org/2000/svg}polyline")) == 13  # every figure's line

    # `replyrank export` puts the rounds into the bundle's training entry; the last round's discriminator (a pair model)
    # is its realism scorer, beside a transformers upvote regressor
    bundle = tmp_path / "bundle"
    exported = CliRunner().invoke(main, [
        "export", "--generator", str(out), "--discriminator", report["discriminator"], "--upvotes", str(models["upv"]),
        "--out", str(bundle), "--quantize", "none", "--no-quality-gate", "--validation-data", str(DUMPS[1]),
    ])
    assert exported.exit_code == 0, exported.output
    exported = replyrank.load(bundle).bundle
    assert [r["round"] for r in exported.training["generator"]["adversarial"]["rounds"]] == [0, 1, 2]
    assert exported.discriminator.metrics["roc_auc"] == rounds[2]["fresh_pair_model_auc"]
    assert exported.discriminator.output == rankers.OUTPUTS[0] and exported.upvotes.output == "logits"


@pytest.mark.skipif(not DUMPS[0].exists(), reason="../shared/data/reddit is not there")
def test_dpo_rounds_train_on_real_replies_preferred_over_the_least_human_candidates(models, upvote_scorer, tmp_path):
    out = tmp_path / "gen"
    args = tiny_rounds(models, out, "--upvotes", str(upvote_scorer), "--rounds", "2", "--method", "dpo", "--dpo-beta", "2",
                       "--dpo-length-normalized", "--dpo-replay", "1", "--judge-history")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rounds = json.loads((out / "rounds.json").read_text())["rounds"]
    picked = json.loads((tmp_path / "gen.rounds" / "round-0" / adversarial.DISTILL).read_text())
    assert picked["stats"]["preference_pairs"] == len(picked["preferences"]) > 0
    real = set(adversarial.RoundData.load([str(d) for d in DUMPS], AdversarialOptions()).train)
    assert [p for p in picked["preferences"] if (p[0], p[1]) not in real] == []  # a real reply to that comment
    assert rounds[1]["fine_tune"]["method"] == "dpo" and rounds[1]["fine_tune"]["final_reward_accuracy"] is not None
    assert rounds[1]["fine_tune"]["length_normalized"] is True
    assert all(rounds[1][name] is not None for name in FIGURES)
    # with --dpo-replay 1, round 2 trains on round 1's pairs and round 0's again
    assert rounds[1]["fine_tune"]["pairs_of_rounds"] == [0] and rounds[2]["fine_tune"]["pairs_of_rounds"] == [0, 1]
    assert rounds[2]["fine_tune"]["train_pairs"] > rounds[1]["fine_tune"]["train_pairs"]
    # with --judge-history, round 1's negatives are the least human under the mean logit of round 0's and round 1's judges
    work = tmp_path / "gen.rounds"
    history = json.loads((work / "round-1" / adversarial.DISTILL).read_text())
    assert history["stats"]["ranked_by_rounds"] == [0, 1] and picked["stats"]["ranked_by_rounds"] == [0]
    tune = [tuple(p) for p in json.loads((work / "round-1" / adversarial.SAMPLES).read_text())["tune"]]
    options = AdversarialOptions(discriminator=replace(AdversarialOptions().discriminator, device="cpu"))
    logit = sum(np.log(q / (1 - q)) for q in (Judge.read(work / f"round-{j}", options.discriminator).scores(tune) for j in (0, 1))) / 2
    own, rivals = {p[0]: p[1].strip() for p in history["preferences"]}, {}
    for i, (comment, reply) in enumerate(tune):
        if comment in own and reply.strip() and reply.strip() != own[comment]:
            rivals.setdefault(comment, []).append(i)
    assert sorted(own) == sorted(rivals)
    # each rejected reply is its comment's lowest under that mean logit, to within float noise: the run scored with the
    # judges it held in memory, this test with the ones it saved, and tiny models' candidates come close to ties
    for comment, _, rejected in history["preferences"]:
        lowest = min(logit[i] for i in rivals[comment])
        assert min(logit[i] for i in rivals[comment] if tune[i][1] == rejected) <= lowest + 1e-4


@pytest.mark.skipif(not DUMPS[0].exists(), reason="../shared/data/reddit is not there")
def test_a_work_folder_refuses_other_settings(models, tmp_path):
    work = tmp_path / "rounds"
    work.mkdir()
    (work / adversarial.SETTINGS).write_text(json.dumps({"rounds": 5}))
    with pytest.raises(replyrank.ReplyrankError, match="other settings"):
        adversarial.adversarial_rounds([str(d) for d in DUMPS], str(models["gpt2"]), str(models["disc"]), tmp_path / "out",
                                       AdversarialOptions(rounds=1), work=work)


@pytest.mark.skipif(not DUMPS[0].exists(), reason="../shared/data/reddit is not there")
def test_rounds_stop_once_the_fresh_judge_can_no_longer_tell(models, tmp_path):
    out = tmp_path / "gen"
    result = CliRunner().invoke(main, tiny_rounds(models, out, "--rounds", "3", "--until-auc", "1.0", "--discriminator-epochs", "2"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["round"] for r in report["rounds"]] == [0, 1] and report["stopped_at"] == 1  # any AUC is <= 1.0
    assert report["discriminator"].endswith("round-1/discriminator") and not (tmp_path / "gen.rounds" / "round-2").exists()
    assert report["settings"]["until_auc"] == 1.0 and report["settings"]["discriminator"]["epochs"] == 2
