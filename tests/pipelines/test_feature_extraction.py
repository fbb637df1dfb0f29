"""feature-extraction against transformers' pipeline: tiny checkpoints of each family and the real MiniLM."""

import pytest
import torch

import fastx
from tests.pipelines.conftest import CORPUS, assert_same, transformers


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_hidden_states_equal_transformers(make_checkpoint, family):
    folder = make_checkpoint(family, "base")
    ours, theirs = (
        fastx.pipeline("feature-extraction", folder),
        transformers.pipeline("feature-extraction", str(folder)),
    )
    assert_same(ours(CORPUS[0]), theirs(CORPUS[0]))
    assert_same(ours(CORPUS, return_tensors=True), theirs(CORPUS, return_tensors=True))
    kwargs = {"tokenize_kwargs": {"truncation": True, "max_length": 7}}
    assert_same(ours(CORPUS[:2], **kwargs), theirs(CORPUS[:2], **kwargs))


def test_default_model_is_the_embedded_minilm(minilm_path):
    ours = fastx.pipeline("feature-extraction")  # no model: all-MiniLM-L6-v2 from its registry package
    theirs = transformers.pipeline("feature-extraction", model=minilm_path)
    assert_same(ours(CORPUS[:3], return_tensors=True), theirs(CORPUS[:3], return_tensors=True))


def test_batched_rows_keep_their_own_length(make_checkpoint):
    folder = make_checkpoint("bert", "base")
    ours = fastx.pipeline("feature-extraction", folder)
    single = [ours(text, return_tensors=True) for text in CORPUS]
    batched = ours(CORPUS, batch_size=6, return_tensors=True)
    for a, b in zip(batched, single):
        assert a.shape == b.shape  # no padded positions in the result
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_truncation_given_twice_is_refused(make_checkpoint):
    ours = fastx.pipeline("feature-extraction", make_checkpoint("bert", "base"))
    with pytest.raises(ValueError, match="truncation given twice"):
        ours("a", truncation=True, tokenize_kwargs={"truncation": True})
