"""The bundle as a typed contract: version-1 manifests still load, the manifest round-trips through
the dataclasses, and two scorers on one graph with two outputs open one session and run once."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import replyrank
from replyrank.bundle import (
    DISCRIMINATOR, FORMAT_VERSION, MANIFEST, READABLE_VERSIONS, UPVOTES, Bundle, GeneratorSpec, Score, ScorerSpec,
)
from replyrank.cli import main
from replyrank.errors import BundleError
from replyrank.generate import GenerationOptions
from replyrank.score import Scorers

COMMENT = "has anyone tried the pasta place near campus"


def version_1_manifest(bundle: Bundle) -> dict:
    """The manifest as replyrank 0.1's export wrote it (format_version 1), for the same files."""
    generator, disc, upv = bundle.generator, bundle.discriminator, bundle.upvotes
    return {
        "format_version": 1,
        "replyrank_version": "0.1.0",
        "quantization": bundle.quantization,
        "sources": dict(bundle.sources),
        "realism_threshold": bundle.realism_threshold,
        "validation": dict(bundle.validation),
        "threshold_calibration": "median realism of the bundle's own candidates on validation comments",
        "generator": {
            "path": "generator", "kind": "causal-lm", "architecture": generator.architecture,
            "prompt_template": generator.prompt_template, "eos_token_ids": list(generator.eos_token_ids),
            "bos_token_id": generator.bos_token_id, "context_length": generator.context_length, "vocab_size": generator.vocab_size,
            "graph": generator.graph, "kv_cache": generator.kv_cache, "files": dict(generator.files),
        },
        "discriminator": {
            "path": "discriminator", "kind": "probability", "label": 1, "max_length": 256,
            "score": {"name": "realism", "meaning": "probability that a human wrote the reply to the comment", "scale": "0-1"},
            "vocab_size": disc.vocab_size, "pad_token_id": disc.pad_token_id, "files": dict(disc.files),
        },
        "upvotes": {
            "path": "upvotes", "kind": "regression", "max_length": 256,
            "score": {"name": "upvotes", "meaning": "predicted Reddit score of the reply", "scale": "log1p(max(score, 0))"},
            "vocab_size": upv.vocab_size, "pad_token_id": upv.pad_token_id, "files": dict(upv.files),
        },
    }


def test_a_version_1_bundle_loads_and_replies_as_before(gpt2_bundle, tmp_path):
    # compared with the same bundle told not to use its stored prefix cache, which version 1 did not have
    plain = tmp_path / "plain"
    shutil.copytree(gpt2_bundle, plain)
    manifest = json.loads((plain / MANIFEST).read_text())
    manifest["generator"]["prefix_cache"] = None
    (plain / MANIFEST).write_text(json.dumps(manifest))
    current = replyrank.load(plain, realism_threshold=0.0)
    old = tmp_path / "v1"
    shutil.copytree(gpt2_bundle, old)
    (old / MANIFEST).write_text(json.dumps(version_1_manifest(current.bundle)))
    bot = replyrank.load(old, realism_threshold=0.0)
    assert bot.bundle.format_version == 1
    assert bot.bundle.discriminator.output == bot.bundle.upvotes.output == "logits"
    assert bot.bundle.generator.sampling == GenerationOptions()  # what the version-1 runtime sampled with
    assert bot.bundle.upvotes.score.scale == "log1p(max(score, 0))"  # its own words are kept
    a = bot.reply(COMMENT, candidates=3, max_new_tokens=8, seed=2).to_dict()
    b = current.reply(COMMENT, candidates=3, max_new_tokens=8, seed=2).to_dict()
    assert a["candidates"] == b["candidates"]
    info = CliRunner().invoke(main, ["info", "--bundle", str(old)])
    assert info.exit_code == 0 and "read from a version-1 manifest" in info.stdout


def test_a_future_version_names_the_re_export_command(gpt2_bundle, tmp_path):
    future = tmp_path / "future"
    shutil.copytree(gpt2_bundle, future)
    manifest = json.loads((future / MANIFEST).read_text())
    (future / MANIFEST).write_text(json.dumps({**manifest, "format_version": max(READABLE_VERSIONS) + 1}))
    with pytest.raises(BundleError, match=r"format version 4; this replyrank reads versions 1, 2, 3: upgrade replyrank, or re-export it with `replyrank export`") as error:
        Bundle.read(future)
    assert "\n" not in str(error.value)


def test_the_manifest_round_trips_through_the_dataclasses(gpt2_bundle):
    read = Bundle.read(gpt2_bundle)
    assert read.format_version == FORMAT_VERSION and isinstance(read.generator.sampling, GenerationOptions)
    again = Bundle.from_json(json.loads(json.dumps(read.to_json())))
    assert again == read
    written = json.loads((Path(gpt2_bundle) / MANIFEST).read_text())
    assert written == read.to_json()
    assert "seed" not in written["generator"]["sampling"] and written["discriminator"]["output"] == "logits"


def test_specs_are_frozen_and_keep_no_runtime_state(gpt2_bundle):
    bot = replyrank.load(gpt2_bundle)
    with pytest.raises(AttributeError):
        setattr(bot.bundle.generator, "path", "elsewhere")
    assert set(vars(bot.bundle.discriminator)) == {f for f in ScorerSpec.__dataclass_fields__}
    assert bot.bundle.root == Path(gpt2_bundle).resolve()


# ---------------------------------------------------------------- one graph, two heads

VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "yes": 4, "no": 5, "maybe": 6, "pasta": 7}


def two_head_scorer(folder: Path) -> Path:
    """A graph with two outputs over (comment, reply) ids: s = 0.01 * sum of the ids under the mask;
    `realism_logits` = (-s, s) and `upvotes` = s; and a word-level tokenizer with BERT's pair template."""
    import onnx
    from onnx import TensorProto, helper
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder.mkdir(parents=True)
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis"], ["total"], keepdims=1),
        helper.make_node("Cast", ["total"], ["total_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["total_f", "hundredth"], ["s"]),
        helper.make_node("Neg", ["s"], ["minus_s"]),
        helper.make_node("Concat", ["minus_s", "s"], ["realism_logits"], axis=1),
        helper.make_node("Identity", ["s"], ["upvotes"]),
    ]
    graph = helper.make_graph(
        nodes, "two_heads",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]) for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("realism_logits", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("upvotes", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor("axis", TensorProto.INT64, [1], [1]), helper.make_tensor("hundredth", TensorProto.FLOAT, [], [0.01])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    return folder


def shared_bundle(root: Path) -> Bundle:
    two_head_scorer(root / "scorer")
    (root / "generator").mkdir()
    (root / "generator" / "model.onnx").write_bytes(b"not needed by the scorers")
    return Bundle(
        generator=GeneratorSpec(path="generator", prompt_template="{comment}", eos_token_ids=(0,), context_length=64),
        discriminator=ScorerSpec(path="scorer", kind="probability", score=Score("realism", "P(human)", "0-1"), output="realism_logits"),
        upvotes=ScorerSpec(path="scorer", kind="regression", score=Score("upvotes", "s", "raw"), output="upvotes", output_scale=2.0, output_offset=1.0),
    ).write(root)


class CountingSession:
    """An InferenceSession that counts its runs."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, names, feed):
        self.runs += 1
        return self.session.run(names, feed)


def test_two_scorers_on_one_graph_open_one_session_and_run_once(tmp_path):
    bundle = Bundle.read(shared_bundle(tmp_path / "b").root)
    assert bundle.shared_scorer and bundle.discriminator.path == bundle.upvotes.path
    scorers = Scorers(bundle)
    assert list(scorers.graphs) == ["scorer"]
    graph = scorers.graphs["scorer"]
    graph.session = CountingSession(graph.session)
    replies = ["yes", "no maybe", "pasta pasta yes"]
    scores = scorers("pasta", replies)
    assert graph.session.runs == len(replies)  # one run per pair, both heads read from it
    # by hand: ids [CLS]=2 pasta=7 [SEP]=3 <reply ids> [SEP]=3, s = 0.01 * their sum
    s = np.array([0.01 * (2 + 7 + 3 + sum(VOCAB[w] for w in reply.split()) + 3) for reply in replies])
    np.testing.assert_allclose(scores[DISCRIMINATOR], 1 / (1 + np.exp(-2 * s)), rtol=1e-6)  # softmax(-s, s)[1]
    np.testing.assert_allclose(scores[UPVOTES], 2 * s + 1, rtol=1e-6)
    alone = scorers("pasta", replies, names=[UPVOTES])
    assert set(alone) == {UPVOTES} and graph.session.runs == 2 * len(replies)
    np.testing.assert_allclose(alone[UPVOTES], scores[UPVOTES])


def test_a_shared_graph_needs_one_output_per_scorer_and_the_outputs_must_exist(tmp_path):
    bundle = shared_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="both scorers read output"):
        replace(bundle, upvotes=replace(bundle.upvotes, output="realism_logits"))
    with pytest.raises(BundleError, match="share the folder"):
        replace(bundle, generator=replace(bundle.generator, path="scorer"))
    with pytest.raises(BundleError, match="no output 'logits'"):
        Scorers(replace(bundle, upvotes=replace(bundle.upvotes, output="logits")))
    with pytest.raises(BundleError, match="output 'upvotes' holds 1 values, its manifest says probability"):
        Scorers(replace(bundle, discriminator=replace(bundle.discriminator, output="upvotes"), upvotes=replace(bundle.upvotes, output="realism_logits")))


def test_a_shared_scorer_folder_is_hashed_and_verified_once(tmp_path):
    bundle = shared_bundle(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / MANIFEST).read_text())
    assert manifest["discriminator"]["files"] == manifest["upvotes"]["files"] and "model.onnx" in manifest["upvotes"]["files"]
    Bundle.read(bundle.root).verify(use_stamp=False)
    with open(tmp_path / "b" / "scorer" / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="scorer/tokenizer.json does not match the sha256"):
        Bundle.read(bundle.root)
