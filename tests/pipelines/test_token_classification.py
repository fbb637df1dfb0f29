"""token-classification / ner against transformers' pipeline on the same tiny checkpoints."""

import pytest

import fastx
from tests.pipelines.conftest import CORPUS, NER_LABELS, assert_same, transformers

STRATEGIES = ["none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module", params=["bert", "roberta", "distilbert"])
def pair(request, make_checkpoint):
    folder = make_checkpoint(request.param, "tok", NER_LABELS)
    return fastx.pipeline("ner", model=folder, device="cpu"), transformers.pipeline("ner", model=str(folder))


@pytest.mark.filterwarnings("ignore:Tokenizer does not support real words")
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entities_equal_transformers(pair, strategy):
    ours, theirs = pair
    expected = theirs(CORPUS, aggregation_strategy=strategy)
    assert any(expected), "the tiny model predicts no entity: the comparison would be empty"
    assert_same(ours(CORPUS, aggregation_strategy=strategy), expected)


@pytest.mark.filterwarnings("ignore:Tokenizer does not support real words")
def test_single_batched_and_streamed_inputs_agree(pair):
    ours, _ = pair
    one_by_one = [ours(text, aggregation_strategy="first") for text in CORPUS]
    assert_same(ours(CORPUS, batch_size=4, aggregation_strategy="first"), one_by_one)
    stream = ours((t for t in CORPUS), batch_size=3, aggregation_strategy="first")
    assert not isinstance(stream, list)
    assert_same(list(stream), one_by_one)


def test_ignore_labels_and_init_parameters(pair):
    ours, theirs = pair
    assert_same(ours(CORPUS[0], ignore_labels=[]), theirs(CORPUS[0], ignore_labels=[]))
    assert len(ours(CORPUS[0], ignore_labels=[])) == len([t for t in ours.encoder.encode(CORPUS[0])[0].ids]) - 2
    folder = ours.model.name_or_path
    fixed = fastx.pipeline("token-classification", model=folder, aggregation_strategy="simple", ignore_labels=[])
    assert_same(fixed(CORPUS[1]), theirs(CORPUS[1], aggregation_strategy="simple", ignore_labels=[]))


def test_long_text_with_stride_equals_transformers(make_checkpoint):
    folder = make_checkpoint("bert", "tok", NER_LABELS)
    text = " ".join(CORPUS * 12)  # ~1,000 tokens: beyond the tokenizer's 512
    ours = fastx.pipeline("ner", model=folder, device="cpu")
    theirs = transformers.pipeline("ner", model=str(folder))
    for strategy in ("simple", "first"):
        expected = theirs(text, stride=64, aggregation_strategy=strategy)
        assert_same(ours(text, stride=64, aggregation_strategy=strategy, batch_size=2), expected)
        assert max(e["end"] for e in expected) > len(text) // 2  # the later windows were read
    assert_same(ours(text), theirs(text))  # no stride: the first window only, as transformers


def test_bad_parameters_are_named(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ours("text", aggregation_strategy="longest")
    with pytest.raises(ValueError, match="stride"):
        ours("text", stride=10, aggregation_strategy="none")
    with pytest.raises(ValueError, match="ignore_labels"):
        ours("text", ignore_labels="O")
    with pytest.raises(ValueError, match="expected a string"):
        ours(3)
    with pytest.raises(ValueError, match="unexpected argument"):
        ours("text", top_k=3)
