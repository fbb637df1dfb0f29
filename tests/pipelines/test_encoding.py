"""SpanEncoder: offsets, special-token masks and overlapping windows, equal to transformers' tokenizer."""

import pytest

from fastx.pipelines.encoding import SpanEncoder, features_of
from fastx.processing import AutoTokenizer
from tests.pipelines.conftest import CORPUS, transformers


@pytest.fixture(scope="module")
def tokenizers(minilm_path):
    return SpanEncoder(AutoTokenizer.from_pretrained(minilm_path)), transformers.AutoTokenizer.from_pretrained(
        minilm_path
    )


def test_offsets_and_masks_equal_transformers(tokenizers):
    ours, theirs = tokenizers
    for text in CORPUS:
        (encoding,) = ours.encode(text)
        expected = theirs(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        feature = features_of(encoding, with_types=True)
        assert feature["input_ids"] == expected["input_ids"]
        assert feature["offsets"] == [tuple(o) for o in expected["offset_mapping"]]
        assert feature["special_tokens_mask"] == expected["special_tokens_mask"]


def test_windows_equal_transformers_overflow(tokenizers):
    ours, theirs = tokenizers
    question, context = "Where?", " ".join(CORPUS * 3)
    windows = ours.encode(question, context, max_length=40, stride=8, strategy="only_second")
    expected = theirs(
        question, context, max_length=40, stride=8, truncation="only_second", return_overflowing_tokens=True
    )
    assert len(windows) == len(expected["input_ids"]) > 3
    assert [w.ids for w in windows] == expected["input_ids"]


def test_windows_leave_the_shared_tokenizer_untouched(tokenizers):
    ours, _ = tokenizers
    ours.encode(" ".join(CORPUS), max_length=16, stride=4)
    assert ours.backend.truncation is None  # the next call starts clean
    assert len(ours.tokenizer(" ".join(CORPUS))["input_ids"]) > 16


def test_tokens_to_string_uses_the_decoder(tokenizers):
    ours, theirs = tokenizers
    tokens = theirs.tokenize("antidisestablishmentarianism rocks")
    assert ours.tokens_to_string(tokens) == theirs.convert_tokens_to_string(tokens)
    assert ours.subword_prefix == "##" and ours.model_max_length == 512
