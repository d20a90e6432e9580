"""The model card: `README.md` in every bundle folder, in the layout of Hugging Face model cards.

A YAML header (license, base models, language, datasets, metrics, tags, and the held-out results as a
`model-index`), then what the bundle is for, how to load it (replyrank, and optimum's
`ORTModelForSequenceClassification` where a scorer graph fits it), what it was trained on, how it was
evaluated and with what result, and its limitations and risks. Every figure comes from the manifest
the export has just written (`Bundle`): the card says what that bundle measured, nothing else;
`CardFacts` carries what the manifest does not know (licenses, base model names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replyrank.bundle import DISCRIMINATOR, GENERATOR, MODEL_CARD, UPVOTES, Bundle, ScorerSpec


@dataclass(frozen=True)
class CardFacts:
    """What the card says that the manifest cannot: the weights' license and where the models came from."""

    license: str = "other"  # an SPDX id as the Hub takes it (apache-2.0, mit), or "other"
    base_models: tuple[str, ...] = ()  # Hub ids of the models the parts were fine-tuned from
    datasets: tuple[str, ...] = ()
    language: tuple[str, ...] = ("en",)
    title: str | None = None


def write_model_card(bundle: Bundle, folder: Path, facts: CardFacts = CardFacts()) -> Path:
    """Write `folder/README.md` for `bundle` (as written into `folder`); returns its path."""
    path = Path(folder) / MODEL_CARD
    path.write_text(model_card(bundle, facts), encoding="utf-8")
    return path


def model_card(bundle: Bundle, facts: CardFacts = CardFacts()) -> str:
    """The card's text: the YAML header, then one section per question a user asks before trusting a ranker."""
    title = facts.title or ("replyrank ranking bundle" if bundle.ranking_only else "replyrank bundle")
    sections = [_header(bundle, facts), f"# {title}\n\n{_summary(bundle)}", _use(bundle), _loading(bundle),
                _training(bundle), _evaluation(bundle), _limitations(bundle)]
    return "\n\n".join(sections).rstrip() + "\n"


def _header(bundle: Bundle, facts: CardFacts) -> str:
    header: dict[str, Any] = {
        "license": facts.license,
        "language": list(facts.language),
        "library_name": "onnxruntime",
        "pipeline_tag": "text-classification" if bundle.ranking_only else "text-generation",
        "tags": ["replyrank", "onnx", "reply-ranking", "reddit", *(() if bundle.ranking_only else ("reply-generation",))],
        "metrics": ["accuracy", "roc_auc"],
    }
    if facts.base_models:
        header["base_model"] = list(facts.base_models)
    if facts.datasets:
        header["datasets"] = list(facts.datasets)
    results = _results(bundle)
    if results:
        header["model-index"] = [{"name": facts.title or "replyrank", "results": results}]
    return "---\n" + _yaml(header) + "---"


def _results(bundle: Bundle) -> list[dict[str, Any]]:
    """The held-out figures in the Hub's model-index form: the upvote score's pairwise accuracy per protocol and split."""
    results = []
    for where, report in (bundle.upvotes.metrics.get("evaluation") or {}).items():
        metrics = [{"type": "accuracy", "name": f"pairwise accuracy, {protocol}", "value": round(float(accuracy["model"]), 4)}
                   for protocol, accuracy in (report.get("pairwise") or {}).items()]
        if metrics:
            results.append({"task": {"type": "text-classification", "name": "which of two sibling replies Reddit scores higher"},
                            "dataset": {"type": "reddit", "name": where.replace("_", " ")}, "metrics": metrics})
    return results


def _yaml(value: Any, indent: int = 0) -> str:
    """The header as YAML (flow-free, every string JSON-quoted, which YAML reads as the same string)."""
    pad = " " * indent
    lines = []
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:\n{_yaml(item, indent + 2).rstrip()}")
        elif isinstance(item, list):
            lines.append(f"{pad}{key}:")
            for element in item:
                if isinstance(element, dict):
                    first, *rest = _yaml(element, indent + 4).splitlines()
                    lines.append(f"{pad}  - {first.lstrip()}")
                    lines.extend(rest)
                else:
                    lines.append(f"{pad}  - {json.dumps(element)}")
        else:
            lines.append(f"{pad}{key}: {json.dumps(item)}")
    return "".join(line + "\n" for line in "\n".join(lines).splitlines())


def _summary(bundle: Bundle) -> str:
    scores = ", ".join(f"**{spec.score.name}** ({spec.score.meaning}; {spec.score.scale})" for spec in bundle.scorers.values())
    what = ("It ranks replies written elsewhere: it holds the scorers and no generator, so it writes none."
            if bundle.ranking_only else "It writes candidate replies to a comment with its generator and ranks them.")
    graph = ("one ONNX graph with one output per score (one encoder pass per pair gives all of them)"
             if bundle.shared_scorer else "one ONNX graph per score")
    return (f"A [replyrank](https://pypi.org/project/replyrank/) bundle, format version {bundle.written_version}, written by "
            f"replyrank {bundle.replyrank_version}. {what} Each (comment, reply) pair gets {scores}, from {graph}; "
            f"quantization: {bundle.quantization}. The manifest `replyrank.json` holds every figure below, with the file hashes.")


def _use(bundle: Bundle) -> str:
    return "\n".join([
        "## Intended use",
        "",
        "- Ranking candidate replies to one comment, best first: replies people or other systems wrote (`replyrank rank`, "
        "`Bot.score`)" + ("." if bundle.ranking_only else ", and the candidates this bundle's generator writes (`replyrank reply`)."),
        "- Scoring many (comment, reply) pairs in batch (`replyrank batch --mode score`) or behind an app (`replyrank serve`, `/v1/score`).",
        "- Measuring a ranker on your own preference pairs (`replyrank eval --pairs FILE.jsonl`).",
        "",
        "Out of scope: deciding on its own what a bot posts to people who have not agreed to talk with a bot; judging whether a "
        "reply is true, kind or safe (no score measures that); text other than English Reddit-style comments.",
    ])


def _loading(bundle: Bundle) -> str:
    lines = ["## How to use", "", "```python", "import replyrank", "",
             "ranker = replyrank.load_ranker(\"path/to/this/folder\")  # the scorers alone",
             "result = ranker.score(\"Any tips for finals week?\", [\"Sleep.\", \"Start early and do past papers.\"])",
             "print(result.best.text, [(c.text, c.realism, c.upvotes) for c in result.candidates])", "```", "",
             "or `replyrank rank --bundle path/to/this/folder --comment \"...\" \"reply one\" \"reply two\"`.", "",
             "### Loading the scorer graphs without replyrank", ""]
    by_path: dict[str, list[ScorerSpec]] = {}
    for spec in bundle.scorers.values():
        by_path.setdefault(spec.path, []).append(spec)
    for path, specs in by_path.items():
        names = ", ".join(f"`{s.output}` ({s.score.name})" for s in specs)
        if len(specs) == 1 and specs[0].output == "logits":
            lines.append(f"- `{path}/` is a sequence classifier with one output, `logits`, and its `config.json` and `tokenizer.json`: "
                         f"it loads with optimum's `ORTModelForSequenceClassification.from_pretrained(\"{path}\")` and a "
                         "transformers `AutoTokenizer` from the same folder, and gives the logits replyrank reads "
                         "(replyrank's tests check that they agree). sentence-transformers' `CrossEncoder(..., backend=\"onnx\")` "
                         "loads through that same optimum class.")
        else:
            lines.append(f"- `{path}/` is one graph with the outputs {names} and no `logits` output, so optimum's "
                         "`ORTModelForSequenceClassification` and sentence-transformers' `CrossEncoder(..., backend=\"onnx\")`, "
                         "which read `logits`, do not load it. Use `replyrank.load_ranker` (above), or ONNX Runtime directly:")
            lines += ["", "```python", "import numpy as np, onnxruntime as ort", "from tokenizers import Tokenizer", "",
                      f"session = ort.InferenceSession(\"{path}/model.onnx\")",
                      f"tokenizer = Tokenizer.from_file(\"{path}/tokenizer.json\")",
                      f"tokenizer.enable_truncation({specs[0].max_length}, strategy=\"longest_first\")",
                      "encoding = tokenizer.encode(\"the comment\", \"a reply\")",
                      "feed = {\"input_ids\": [encoding.ids], \"attention_mask\": [encoding.attention_mask], \"token_type_ids\": [encoding.type_ids]}",
                      "feed = {i.name: np.array(feed[i.name], dtype=np.int64) for i in session.get_inputs()}",
                      f"outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))", "```", ""]
        for spec in specs:
            lines.append(f"  - {spec.score.name}: {_reading(spec)}")
        if specs[0].text_normalization == "dialogrpt":
            lines.append("  - replyrank replaces links with `(URL)` and drops quoted lines (`> ...`) before tokenizing "
                         "(`replyrank.filters.normalize_text`); do the same to get its numbers.")
    return "\n".join(lines)


def _reading(spec: ScorerSpec) -> str:
    if spec.kind == "probability":
        return f"softmax of `{spec.output}`, index {spec.label}"
    scale = f" × {spec.output_scale:g} + {spec.output_offset:g}" if (spec.output_scale, spec.output_offset) != (1.0, 0.0) else ""
    return f"`{spec.output}`[0]{scale}, on the scale {spec.score.scale}"


def _training(bundle: Bundle) -> str:
    training = bundle.training or {}
    lines = ["## Training data", ""]
    if training.get("data"):
        lines += [str(training["data"]), ""]
    for part in (GENERATOR, DISCRIMINATOR, UPVOTES):
        if part == GENERATOR and bundle.ranking_only:
            continue
        record = training.get(part) or {}
        source = bundle.sources.get(part, "")
        said = record.get("data") or record.get("head", {}).get("data")
        files = record.get("data") if isinstance(record.get("data"), list) else None
        described = ", ".join(map(str, files)) if files else said
        lines.append(f"- **{part}** (from `{Path(source).name or source}`): "
                     + (f"{described}." if described else "no training record in the manifest (not trained by replyrank, or trained elsewhere)."))
    return "\n".join(lines)


def _evaluation(bundle: Bundle) -> str:
    lines = ["## Evaluation", ""]
    upvotes = bundle.upvotes.metrics.get("evaluation") or {}
    if upvotes:
        lines += ["Upvotes, DialogRPT's protocol (Gao et al., 2020): pairs of sibling replies to one parent, posted within an hour "
                  "of each other, split by thread; the share of pairs the score orders as Reddit's scores do, beside two "
                  "baselines that read no text (the earlier reply wins: `time`; the longer reply wins: `length`). "
                  "`gap>=N`: the two scores differ by at least N; `dialogrpt`: DialogRPT's own filter.", "",
                  "`preference_pairs`: the held-out pairs of the preference file it was trained on (`base`: the head it started from).", "",
                  "| held out | pairs | model | time | length | base |", "| --- | --- | --- | --- | --- | --- |"]
        for where, report in upvotes.items():
            for protocol, accuracy in (report.get("pairwise") or {}).items():
                count = (report.get("pairs") or {}).get(protocol, "")
                cells = " | ".join(f"{accuracy[k]:.3f}" if k in accuracy else "-" for k in ("model", "time", "length", "base"))
                lines.append(f"| {where.replace('_', ' ')}, {protocol} | {count} | {cells} |")
        lines.append("")
    realism = bundle.discriminator.metrics
    if "roc_auc" in realism:
        lines += [f"Realism: ROC-AUC {realism['roc_auc']:.3f} of real replies against generated ones on held-out examples"
                  + (f" ({realism['test_examples']} of them)" if realism.get("test_examples") else "")
                  + (f"; {realism['data']}" if realism.get("data") else "") + ".", ""]
    if bundle.threshold_calibration:
        lines += [f"Realism threshold {bundle.realism_threshold:.3f}: {bundle.threshold_calibration}.", ""]
    validation = bundle.validation
    if "passed" in validation:
        checked = ", ".join(key.removesuffix("_vs_torch") for key in validation if key.endswith("_vs_torch"))
        lines += [f"Export checks: the ONNX graphs against PyTorch on {validation.get('pairs', '?')} real pairs ({checked}); "
                  f"gates {'passed' if validation['passed'] else 'NOT passed (exported with --no-quality-gate)'}.", ""]
    if len(lines) == 2:
        lines.append("The manifest records no held-out figures for these models: measure them with `replyrank eval`.")
    lines.append("Reproduce on your data: `replyrank eval --bundle THIS_FOLDER --data RC_x.zst RS_x.zst` (Pushshift dumps) or "
                 "`replyrank eval --bundle THIS_FOLDER --pairs FILE.jsonl` (your preference pairs).")
    return "\n".join(lines)


def _limitations(bundle: Bundle) -> str:
    measured = ("The evaluation above says how often it orders held-out pairs right: far from always."
                if bundle.upvotes.metrics.get("evaluation") else "This bundle records no held-out figures: measure it before trusting it.")
    return "\n".join([
        "## Limitations and risks",
        "",
        "- **It ranks text a bot may post.** A high realism score means the scorer could not tell the reply from a person's, "
        "not that people cannot: a generator tuned against one judge can still fail another (a lexical detector, a reader). "
        "Say that a bot wrote what it posts, and follow the rules of the community it posts in (Reddit's on bots among them).",
        "- **Upvotes are not quality.** The upvote score predicts what one community voted up: popularity, timing, in-jokes and "
        f"its biases, not truth, kindness or safety. {measured}",
        "- **Narrow data.** The scorers know the data named above (for realism: the real replies and the generators it was "
        "trained against); other communities, languages, registers and generators are out of their distribution.",
        "- **Reads a bounded window.** Each pair is cut to its scorer's token limit "
        f"({bundle.upvotes.max_length} tokens, longest text first), so what comes later in a long comment or reply is not read.",
        "- **Scores compare within one bundle.** The numbers' scales differ between bundles; compare replies, not bundles.",
    ])
