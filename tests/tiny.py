"""Tiny random models and tokenizers that the tests build themselves (no hub): GPT-2, Llama, BERT."""

from __future__ import annotations

import json
from pathlib import Path

# slices of real Pushshift dumps, shared beside the checkout (tests that need them skip without)
REDDIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reddit"

CORPUS = [
    "what do you think about the new library in town",
    "i think it is great and the coffee is good too",
    "has anyone tried the pasta place near campus",
    "yes it was fine but a bit expensive for students",
    "how many hours a week do you study for finals",
    "too many honestly, i need a break and some sleep",
    "does the gym open early on weekends this semester",
    "no idea, ask the front desk or check their website",
] * 4


def causal_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def bert_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = BertTokenizerFast(tokenizer_object=tokenizer)
    fast.save_pretrained(folder)
    return fast


def build_generator(folder: Path, kind: str, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = causal_tokenizer(folder)
    eos = tokenizer.eos_token_id
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    # sharper-than-default weights so next-token choices are decisive, as in a trained model
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    (folder / "replyrank_generator.json").write_text(json.dumps({"prompt_template": "comment: {comment}\nreply:"}))
    return folder


def build_scorer(folder: Path, labels: int, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = bert_tokenizer(folder)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=256, num_labels=labels,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


PAIRS = [(CORPUS[i], CORPUS[i + 1]) for i in range(0, 16, 2)]
CALIBRATION_PAIRS = [(CORPUS[i], CORPUS[i + 1]) for i in range(1, 16, 2)]  # the int8 smoothing's texts, other than PAIRS


def build_relevance(folder: Path, scale: float = 8.0, offset: float = -4.0, seed: int = 2) -> Path:
    """A tiny BERT text embedder with a relevance calibration (export.relevance's folder layout)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tokenizer = bert_tokenizer(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=256)
    BertModel(config).save_pretrained(folder)
    info = {"pooling": "mean", "normalize": True, "max_length": 64, "text_normalization": "dialogrpt",
            "calibration": {"scale": scale, "offset": offset, "fitted_on": "nothing: a test model"}}
    (folder / "replyrank_relevance.json").write_text(json.dumps(info))
    return folder
