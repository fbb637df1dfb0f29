"""text-classification / sentiment-analysis against transformers' pipeline on tiny checkpoints."""

import pytest

import fastx
from tests.pipelines.conftest import CORPUS, SENTIMENT_LABELS, assert_same, transformers

PAIRS = [{"text": "A man plays a guitar.", "text_pair": "Someone makes music."}, {"text": "Short.", "text_pair": "x"}]


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def pair(request, make_checkpoint):
    folder = make_checkpoint(request.param, "seq", SENTIMENT_LABELS)
    return fastx.pipeline("sentiment-analysis", model=folder), transformers.pipeline("sentiment-analysis", str(folder))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"top_k": None}, {"top_k": 2}, {"function_to_apply": "sigmoid"}, {"function_to_apply": "none", "top_k": 3}],
    ids=["default", "all", "top2", "sigmoid", "none"],
)
def test_labels_and_scores_equal_transformers(pair, kwargs):
    ours, theirs = pair
    assert_same(ours(CORPUS, **kwargs), theirs(CORPUS, **kwargs))
    assert_same(ours(CORPUS[0], **kwargs), theirs(CORPUS[0], **kwargs))  # one text: transformers' shapes
    assert_same(ours(PAIRS, **kwargs), theirs(PAIRS, **kwargs))
    assert_same(ours(PAIRS[0], **kwargs), theirs(PAIRS[0], **kwargs))


def test_single_batched_and_streamed_inputs_agree(pair):
    ours, _ = pair
    one_by_one = [ours(text, top_k=None) for text in CORPUS]
    assert_same(ours(CORPUS, batch_size=4, top_k=None), one_by_one)
    assert_same(list(ours(iter(CORPUS), batch_size=5, top_k=None)), one_by_one)


def test_one_label_model_defaults_to_sigmoid(make_checkpoint):
    folder = make_checkpoint("bert", "seq", ["score"])
    ours, theirs = (
        fastx.pipeline("text-classification", folder),
        transformers.pipeline("text-classification", str(folder)),
    )
    assert_same(ours(CORPUS), theirs(CORPUS))
    assert all(0 < r["score"] < 1 for r in ours(CORPUS))


def test_bad_inputs_are_named(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="text_pair"):
        ours({"text": "a", "pair": "b"})
    with pytest.raises(ValueError, match="function_to_apply"):
        ours("a", function_to_apply="relu")
    with pytest.raises(ValueError, match="top_k"):
        ours("a", top_k=0)
    with pytest.raises(ValueError, match="tokenize_kwargs|unsupported"):
        ours("a", padding_side="left")
