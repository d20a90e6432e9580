"""The training chain on a small real slice of Reddit: dump → pairs → three trained models → bundle → reply."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny import REDDIT

import replyrank
from replyrank.cli import main
from replyrank.export.recipes import load_split
from replyrank.export.train import TrainOptions, train_discriminator, upvote_target
from replyrank.filters import ngram_hashes

DUMPS = [REDDIT / "college" / "RS_CollegeAdvice.zst", REDDIT / "college" / "RC_CollegeAdvice.zst"]


@pytest.mark.skipif(not DUMPS[0].exists(), reason="../shared/data/reddit is not there")
def test_train_all_from_real_dumps_to_a_working_bundle(models, tmp_path):
    out = tmp_path / "bundle"
    args = ["train", "all", "--out", str(out), "--work", str(tmp_path / "models"), "--generator-base", str(models["gpt2"]),
            "--scorer-base", str(models["disc"]), "--max-pairs", "64", "--max-steps", "4", "--batch-size", "4",
            "--max-length", "64", "--fakes", "24", "--device", "cpu"]
    for dump in DUMPS:
        args += ["--data", str(dump)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    assert metrics["generator"]["valid_reply_perplexity"] > 1
    assert 0 <= metrics["discriminator"]["roc_auc"] <= 1
    assert -1 <= metrics["upvotes"]["spearman"] <= 1 and "pairwise_accuracy_all" in metrics["upvotes"]
    assert 0 <= metrics["generator"]["discriminator_pass_share_at_0.5"] <= 1
    # the prompt template the generator was trained with is the one the bundle uses
    trained = json.loads((tmp_path / "models" / "generator" / "replyrank_generator.json").read_text())
    bot = replyrank.load(out)
    assert bot.bundle.generator.prompt_template == trained["prompt_template"]
    assert bot.bundle.training["generator"]["valid_reply_perplexity"] == metrics["generator"]["valid_reply_perplexity"]
    reply = CliRunner().invoke(main, ["reply", "is a gap year a good idea?", "--bundle", str(out), "-n", "2", "--max-new-tokens", "6", "--json"])
    assert reply.exit_code == 0 and len(json.loads(reply.stdout)["candidates"]) == 2
    # the bundle carries the generator's training replies as n-gram hashes, and a candidate copying one is dropped
    assert bot.bundle.generator.training_ngrams and bot.bundle.read_training_ngrams().size > 0
    ngrams = set(bot.bundle.read_training_ngrams().tolist())
    trained_on = [p.reply for p in load_split([str(d) for d in DUMPS])["train"] if len(p.reply.split()) >= 12]
    copied = next(r for r in trained_on if set(ngram_hashes(r, bot.bundle.generator.training_ngram_words).tolist()) <= ngrams)
    dropped = bot.score("a comment of its own", [copied, "a reply of its own"]).candidates
    assert [c.reason for c in dropped if c.text == copied][0].startswith("copies a training reply")


def test_too_few_examples_is_a_clear_error(models, tmp_path):
    pairs = [("a", "b")] * 3
    with pytest.raises(replyrank.ReplyrankError, match="too few examples"):
        train_discriminator(pairs, pairs, [], [], str(models["disc"]), tmp_path / "d", TrainOptions(max_steps=1))


def test_upvote_target_is_symmetric_log():
    assert upvote_target(0) == 0
    assert upvote_target(-5) == -upvote_target(5)
    assert upvote_target(1000) < 7.0


def test_interrupted_training_resumes_from_its_checkpoint(models, tmp_path):
    import torch

    from replyrank.export.train import CHECKPOINT, train_loop

    model = torch.nn.Linear(2, 1)
    batches = [torch.ones(1, 2)] * 8
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    options = TrainOptions(max_steps=8, save_every=2, seed=0)
    steps: list[int] = []

    def interrupted(m, batch):
        if len(steps) == 5:
            raise KeyboardInterrupt  # the run dies after step 5; the last checkpoint is at step 4
        steps.append(1)
        return m(batch).pow(2).mean()

    with pytest.raises(KeyboardInterrupt):
        train_loop(model, batches, interrupted, options, staging, "test")
    assert torch.load(staging / CHECKPOINT / "state.pt", weights_only=False)["step"] == 4
    resumed: list[int] = []
    train_loop(model, batches, lambda m, b: resumed.append(1) or m(b).pow(2).mean(), options, staging, "test")
    assert len(resumed) == 4  # steps 5-8 only


def test_a_byte_level_tokenizer_read_as_llama_is_saved_as_the_gpt2_tokenizer_it_is(models, tmp_path):
    # a GGUF-read SmolLM2 tokenizer is a LlamaTokenizerFast over a byte-level BPE; transformers 5 would
    # rebuild a saved LlamaTokenizer with a SentencePiece pre-tokenizer
    from transformers import AutoTokenizer, LlamaTokenizerFast

    from replyrank.export.convert import save_tokenizer

    llama = LlamaTokenizerFast(tokenizer_file=str(models["gpt2"] / "tokenizer.json"), eos_token="<|im_end|>")
    save_tokenizer(llama, tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    text = "How do I pick a major?  I like   math\n\nand art"
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert again(text, add_special_tokens=False).input_ids == llama(text, add_special_tokens=False).input_ids
    assert again.eos_token == "<|im_end|>"
    save_tokenizer(AutoTokenizer.from_pretrained(models["disc"]), tmp_path / "bert")  # anything else is saved as it is
    assert json.loads((tmp_path / "bert" / "tokenizer_config.json").read_text())["tokenizer_class"] != "GPT2Tokenizer"
