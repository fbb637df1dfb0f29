"""zero-shot-classification against transformers' pipeline on tiny NLI checkpoints."""

import pytest

import fastx
from tests.pipelines.conftest import CORPUS, NLI_LABELS, assert_same, transformers

LABELS = ["travel", "cooking", "dancing", "politics"]


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def pair(request, make_checkpoint):
    folder = make_checkpoint(request.param, "seq", NLI_LABELS)
    task = "zero-shot-classification"
    return fastx.pipeline(task, model=folder), transformers.pipeline(task, model=str(folder))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"multi_label": True}, {"hypothesis_template": "This text is about {}."}],
    ids=["softmax", "multi", "template"],
)
def test_ranking_equals_transformers(pair, kwargs):
    ours, theirs = pair
    assert_same(ours(CORPUS, candidate_labels=LABELS, **kwargs), theirs(CORPUS, candidate_labels=LABELS, **kwargs))
    assert_same(ours(CORPUS[0], LABELS, **kwargs), theirs(CORPUS[0], LABELS, **kwargs))  # labels as positional
    assert_same(
        ours(CORPUS[1], candidate_labels="travel, cooking"), theirs(CORPUS[1], candidate_labels="travel, cooking")
    )
    assert_same(ours(CORPUS[2], candidate_labels=["one"]), theirs(CORPUS[2], candidate_labels=["one"]))


def test_batches_across_texts_and_labels_agree(pair):
    ours, _ = pair
    one_by_one = [ours(text, candidate_labels=LABELS) for text in CORPUS]
    assert_same(ours(CORPUS, candidate_labels=LABELS, batch_size=3), one_by_one)  # batches cut through a text's pairs
    assert_same(list(ours(iter(CORPUS), candidate_labels=LABELS, batch_size=8)), one_by_one)


def test_bad_parameters_are_named(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="candidate_labels"):
        ours("a text")
    with pytest.raises(ValueError, match="candidate_labels"):
        ours("a text", candidate_labels=[])
    with pytest.raises(ValueError, match="hypothesis_template"):
        ours("a text", candidate_labels=LABELS, hypothesis_template="no slot")
