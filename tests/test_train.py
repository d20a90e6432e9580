"""The training chain on a small real slice of Reddit: dump → pairs → three trained models → bundle → reply."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny import REDDIT

import replyrank
from replyrank.cli import main
from replyrank.export import rankers
from replyrank.export.recipes import load_split
from replyrank.export.train import TrainOptions
from replyrank.filters import ngram_hashes

DUMPS = [REDDIT / "college" / "RS_CollegeAdvice.zst", REDDIT / "college" / "RC_CollegeAdvice.zst"]


@pytest.mark.skipif(not DUMPS[0].exists(), reason="../shared/data/reddit is not there")
def test_train_all_from_real_dumps_to_a_working_bundle(models, tmp_path):
    out = tmp_path / "bundle"
    majors = [REDDIT / "college" / f"{kind}_CollegeMajors.zst" for kind in ("RS", "RC")]  # enough sibling pairs for the upvote head
    args = ["train", "all", "--out", str(out), "--work", str(tmp_path / "models"), "--generator-base", str(models["gpt2"]),
            "--scorer-base", str(models["disc"]), "--max-pairs", "64", "--max-steps", "4", "--batch-size", "4",
            "--max-length", "64", "--fakes", "24", "--device", "cpu"]
    for dump in DUMPS + majors:
        args += ["--data", str(dump)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    assert metrics["generator"]["valid_reply_perplexity"] > 1
    # one two-head scorer: the upvote head DialogRPT's way (evaluated against the time and length baselines), then realism
    assert 0 <= metrics["discriminator"]["roc_auc"] <= 1 and "upvotes_kept_correlation" in metrics["discriminator"]
    assert metrics["upvotes"]["head"]["objective"] == "bradley-terry"
    assert {"model", "time", "length"} <= set(metrics["upvotes"]["evaluation"]["test_threads"]["pairwise"]["gap>=1"])
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
        rankers.train_discriminator(pairs, pairs, [], [], str(models["disc"]), tmp_path / "d", rankers.RankerOptions(max_steps=1))
    assert not (tmp_path / "d").exists()


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    import torch

    from replyrank.export.train import CHECKPOINT, train_loop

    batches = [{"x": torch.full((1, 2), float(i))} for i in range(8)]
    options = TrainOptions(max_steps=8, save_every=2, seed=0, device="cpu")

    def run(staging, seen, stop_after=None):
        def loss_fn(m, batch):
            if len(seen) == stop_after:
                raise KeyboardInterrupt  # the run dies during a step
            seen.append(int(batch["x"][0, 0]))
            return (m(batch["x"]) - 1).pow(2).mean()

        return train_loop(model, batches, loss_fn, options, staging, "test")

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    straight: list[int] = []
    run(tmp_path / ".straight.partial", straight)
    unstopped = {k: v.clone() for k, v in model.state_dict().items()}
    assert sorted(straight) == list(range(8))  # every batch once, in the seeded order
    assert not (tmp_path / ".straight.partial" / CHECKPOINT / "checkpoint-8").exists()  # the callers save the final model

    model.load_state_dict(start)
    staging, before, after = tmp_path / ".out.partial", [], []
    with pytest.raises(KeyboardInterrupt):
        run(staging, before, stop_after=5)  # dies in step 6; the last checkpoint is at step 4
    assert [c.name for c in (staging / CHECKPOINT).iterdir()] == ["checkpoint-4"]
    model.load_state_dict(start)  # a new process: the weights come from the checkpoint
    losses = run(staging, after)
    assert after == straight[4:] and len(losses) == 4  # steps 5-8 only, the same batches the straight run had
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, unstopped[name])  # and the same weights at the end


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
