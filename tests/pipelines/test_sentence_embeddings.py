"""fastx.pipelines.sentence_embeddings against sentence-transformers on the real all-MiniLM-L6-v2."""

import pytest
import torch

from fastx.pipelines.sentence_embeddings import embed_texts, embedding_max_length

sentence_transformers = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def minilm():
    from fastx.checkpoints.defaults import default_embedding_model

    try:
        return default_embedding_model()
    except OSError as exc:
        pytest.skip(str(exc))


def test_embeddings_equal_sentence_transformers(minilm):
    # a long sentence crosses the model's max_seq_length (256), where truncation must agree
    texts = ["A cat sits on the mat.", "", "word " * 300, "Quantum chromodynamics describes the strong force."]
    ours = embed_texts(minilm, texts, device="cpu")
    reference = sentence_transformers.SentenceTransformer(minilm, device="cpu")
    theirs = reference.encode(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert ours.shape == theirs.shape == (4, 384)
    cosine = torch.nn.functional.cosine_similarity(ours, theirs.float(), dim=1)
    assert cosine.min() >= 0.99999, cosine


def test_max_length_comes_from_sentence_bert_config(minilm, tmp_path):
    from fastx.models import AutoConfig

    config = AutoConfig.from_pretrained(minilm)
    assert embedding_max_length(minilm, config) == 256  # all-MiniLM-L6-v2's sentence_bert_config.json
    assert embedding_max_length(str(tmp_path), config) == 256  # no file: 256 within the model's 512
