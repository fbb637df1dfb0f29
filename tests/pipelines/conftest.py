"""Shared checkpoints for the pipeline tests: tiny random models with label maps, saved by transformers.

One folder per (family, head), built once per session: BERT and DistilBERT on all-MiniLM-L6-v2's
WordPiece tokenizer (uncased, "##" subwords), RoBERTa on a byte-level BPE trained here on the corpus
but its last two sentences, so that those split into subwords. Weights are drawn wide
(initializer_range 0.3) so that labels and tokens differ from token to token instead of all
sitting near the uniform distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENT_LABELS = ["NEGATIVE", "NEUTRAL", "POSITIVE"]
NLI_LABELS = ["contradiction", "neutral", "entailment"]
CORPUS = [
    "Hugging Face Inc. is a company based in New York City.",
    "My name is Wolfgang and I live in Berlin, Germany!",
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "Antidisestablishmentarianism is an unusually long word; so is floccinaucinihilipilification.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "I love this movie, the acting was wonderful but the ending felt rushed.",
]
HEADS = {
    "base": "Model",
    "seq": "ForSequenceClassification",
    "tok": "ForTokenClassification",
    "mlm": "ForMaskedLM",
    "qa": "ForQuestionAnswering",
}
FAMILIES = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}


def _config(family: str, vocab_size: int, labels: list[str] | None, pad_token_id: int):
    label_maps = {}
    if labels:
        label_maps = dict(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    if family == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37, initializer_range=0.3, **label_maps
        )
    config_class = transformers.BertConfig if family == "bert" else transformers.RobertaConfig
    return config_class(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=514,  # RoBERTa's positions start past its pad id
        initializer_range=0.3,
        pad_token_id=pad_token_id,
        type_vocab_size=1 if family == "roberta" else 2,
        **label_maps,
    )


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from fastx.checkpoints.defaults import default_embedding_model

    try:
        return default_embedding_model()
    except OSError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tokenizers(minilm_path, tmp_path_factory) -> dict:
    """family -> a transformers tokenizer (saved with every checkpoint of that family)."""
    wordpiece = transformers.AutoTokenizer.from_pretrained(minilm_path)
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        CORPUS[:-2],
        vocab_size=600,
        min_frequency=1,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    folder = tmp_path_factory.mktemp("bpe")
    bpe.save_model(str(folder))
    roberta = transformers.RobertaTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=512
    )
    # DistilBERT's tokenizers return no token_type_ids (its models take none), as distilbert-base-* ship
    distil = transformers.AutoTokenizer.from_pretrained(minilm_path, model_input_names=["input_ids", "attention_mask"])
    return {"bert": wordpiece, "distilbert": distil, "roberta": roberta}


@pytest.fixture(scope="session")
def make_checkpoint(tokenizers, tmp_path_factory):
    """make_checkpoint(family, head, labels=None) -> folder with a tiny model of that head and its tokenizer."""
    made: dict[tuple, Path] = {}

    def make(family: str, head: str, labels: list[str] | None = None) -> Path:
        key = (family, head, tuple(labels or ()))
        if key not in made:
            tokenizer = tokenizers[family]
            torch.manual_seed(0)
            config = _config(family, len(tokenizer), labels, tokenizer.pad_token_id)
            model = getattr(transformers, FAMILIES[family] + HEADS[head])(config).eval()
            folder = tmp_path_factory.mktemp(f"{family}-{head}")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[key] = folder
        return made[key]

    return make


def assert_same(ours, theirs, atol: float = 1e-4, path: str = "result") -> None:
    """Same structure, types, keys, strings and integers; floats (and arrays) within atol."""
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape, path
        torch.testing.assert_close(ours.float(), theirs.float(), atol=atol, rtol=0, msg=path)
        return
    assert type(ours) is type(theirs), f"{path}: {type(ours).__name__} vs {type(theirs).__name__}"
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), f"{path}: keys {list(ours)} vs {list(theirs)}"
        for key in theirs:
            assert_same(ours[key], theirs[key], atol, f"{path}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), f"{path}: {len(ours)} items vs {len(theirs)}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            assert_same(a, b, atol, f"{path}[{i}]")
    elif isinstance(theirs, (float, np.floating)):
        assert abs(float(ours) - float(theirs)) <= atol, f"{path}: {ours} vs {theirs}"
    else:
        assert ours == theirs, f"{path}: {ours!r} vs {theirs!r}"
