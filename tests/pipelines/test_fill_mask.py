"""fill-mask against transformers' pipeline on tiny checkpoints: top_k, targets, several masks."""

import pytest

import fastx
from tests.pipelines.conftest import assert_same, transformers


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def pair(request, make_checkpoint):
    folder = make_checkpoint(request.param, "mlm")
    ours, theirs = fastx.pipeline("fill-mask", model=folder), transformers.pipeline("fill-mask", model=str(folder))
    mask = theirs.tokenizer.mask_token
    texts = [f"Paris is the {mask} of France.", f"The quick brown {mask} jumps.", f"I {mask} this {mask} a lot."]
    return ours, theirs, texts


@pytest.mark.parametrize(
    "kwargs", [{}, {"top_k": 2}, {"targets": ["capital", "fox", "city", "zzqx"]}], ids=["default", "top2", "targets"]
)
def test_predictions_equal_transformers(pair, kwargs):
    ours, theirs, texts = pair
    assert_same(ours(texts, **kwargs), theirs(texts, **kwargs))
    assert_same(ours(texts[0], **kwargs), theirs(texts[0], **kwargs))
    assert_same(ours(texts[:1], **kwargs), theirs(texts[:1], **kwargs))  # a list of one is unwrapped


def test_batched_and_streamed_inputs_agree(pair):
    ours, _, texts = pair
    one_by_one = [ours(text) for text in texts]
    assert_same(ours(texts, batch_size=3), one_by_one)
    assert_same(list(ours((t for t in texts), batch_size=2)), one_by_one)


def test_text_without_mask_is_refused(pair):
    ours, _, _ = pair
    with pytest.raises(ValueError, match="no mask token"):
        ours("There is nothing to fill here.")
    with pytest.raises(ValueError, match="top_k"):
        ours(pair[2][0], top_k=0)
