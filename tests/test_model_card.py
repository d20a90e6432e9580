"""The model card (export.card): a Hugging Face header that parses, the sections a user reads before trusting a
ranker, figures that are the manifest's, and loading advice that works: optimum's class on a one-output scorer
graph, and the card's own ONNX Runtime snippet on the two-head graph that class cannot load."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import replyrank
from replyrank.bundle import Bundle
from replyrank.export import ExportOptions, export_bundle, rankers
from replyrank.export.card import CardFacts, model_card
from tiny import PAIRS

SECTIONS = ("## Intended use", "## How to use", "## Training data", "## Evaluation", "## Limitations and risks")
HELD_OUT = {"heldout_subreddits": {"pairwise": {"gap>=1": {"model": 0.629, "time": 0.572, "length": 0.604}}, "pairs": {"gap>=1": 2000}}}


@pytest.fixture(scope="module")
def two_head_bundle(models, tmp_path_factory) -> Path:
    """A bundle whose scorer is one graph with two heads (untrained: the card reads its manifest, not its skill)."""
    model, tokenizer = rankers.build_model(str(models["disc"]))
    info = {"heads": {"upvotes": {"trained": True, "bt_scale": 0.7}}, "options": {"max_length": 64},
            "text_normalization": "dialogrpt", "evaluation": HELD_OUT}
    scorer = rankers.save(model, tokenizer, tmp_path_factory.mktemp("pair") / "scorer", info)
    out = tmp_path_factory.mktemp("b") / "two-head"
    export_bundle(str(models["gpt2"]), str(scorer), str(scorer), out, PAIRS, ExportOptions(quantize="none"))
    return out


def header(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card starts with a YAML header"
    assert "\n\n" not in match.group(1)  # the Hub's parser takes blank lines, a reader should not have to
    return yaml.safe_load(match.group(1))


def test_the_header_parses_and_carries_what_the_hub_reads(two_head_bundle):
    bundle = Bundle.read(two_head_bundle)
    facts = CardFacts(license="apache-2.0", base_models=("sentence-transformers/all-MiniLM-L6-v2",))
    card = model_card(bundle, facts)
    meta = header(card)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert meta["language"] == ["en"] and "accuracy" in meta["metrics"] and meta["pipeline_tag"] == "text-generation"
    (result,) = meta["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "accuracy", "name": "pairwise accuracy, gap>=1", "value": 0.629}]  # the manifest's
    assert all(section in card for section in SECTIONS)
    assert "| heldout subreddits, gap>=1 | 2000 | 0.629 | 0.572 | 0.604 | - |" in card


def test_the_two_head_graph_is_said_not_to_fit_optimum_and_the_cards_snippet_gives_replyranks_scores(two_head_bundle, monkeypatch):
    card = model_card(Bundle.read(two_head_bundle))
    assert "no `logits` output" in card and "`replyrank.load_ranker`" in card
    from optimum.onnxruntime import ORTModelForSequenceClassification

    model = ORTModelForSequenceClassification.from_pretrained(two_head_bundle / "scorer")
    with pytest.raises(KeyError, match="logits"):  # what the card warns of: the class reads an output named `logits`
        model(input_ids=np.array([[2, 5, 3]]), attention_mask=np.array([[1, 1, 1]]), token_type_ids=np.array([[0, 0, 0]]))
    snippet = re.search(r"```python\n(import numpy as np, onnxruntime.*?)```", card, re.S).group(1)
    monkeypatch.chdir(two_head_bundle)
    namespace: dict = {}
    exec(snippet, namespace)  # the card's own code, as a user would run it in the bundle folder
    outputs = namespace["outputs"]
    logits = outputs["realism_logits"][0]
    realism = np.exp(logits[1]) / np.exp(logits).sum()
    scores = replyrank.load_ranker(two_head_bundle).score_pairs([("the comment", "a reply")])
    assert realism == pytest.approx(scores["realism"][0], abs=1e-6)
    assert outputs["upvotes"][0][0] == pytest.approx(scores["upvotes"][0], abs=1e-6)


def test_a_one_output_scorer_graph_loads_in_optimum_with_replyranks_numbers(gpt2_bundle):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    card = model_card(Bundle.read(gpt2_bundle))
    assert 'ORTModelForSequenceClassification.from_pretrained("upvotes")' in card
    scores = replyrank.load_ranker(gpt2_bundle).score_pairs(PAIRS)
    for part, read in (("discriminator", lambda z: np.exp(z[:, 1]) / np.exp(z).sum(axis=1)), ("upvotes", lambda z: z[:, 0])):
        model = ORTModelForSequenceClassification.from_pretrained(gpt2_bundle / part)
        tokenizer = AutoTokenizer.from_pretrained(gpt2_bundle / part)
        logits = np.concatenate([model(**tokenizer([c], [r], return_tensors="np")).logits for c, r in PAIRS])
        name = "realism" if part == "discriminator" else "upvotes"
        assert np.allclose(read(np.asarray(logits, dtype=np.float64)), scores[name], atol=1e-5)


def test_a_ranking_bundles_card_says_it_writes_nothing(gpt2_bundle):
    from dataclasses import replace

    bundle = replace(Bundle.read(gpt2_bundle), generator=None)
    card = model_card(bundle)
    assert header(card)["pipeline_tag"] == "text-classification" and "holds the scorers and no generator" in card
    assert "**generator**" not in card and "no held-out figures" in card
