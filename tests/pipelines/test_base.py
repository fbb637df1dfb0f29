"""The shared input handling: what is an item, a list or a stream; lazy streaming; batch sizes."""

import pytest
import torch

import fastx
from fastx.pipelines.base import check_batch_size, id2label, is_stream
from tests.pipelines.conftest import CORPUS, SENTIMENT_LABELS, assert_same


def test_what_streams_and_what_is_one_item():
    assert is_stream(x for x in "ab") and is_stream(iter([1])) and is_stream(map(str, [1]))

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return CORPUS[i]

    assert is_stream(Dataset())
    for item in ("text", {"text": "a"}, ("a", "b"), torch.zeros(3), b"x"):
        assert not is_stream(item)


def test_streams_are_read_lazily(make_checkpoint):
    classify = fastx.pipeline("text-classification", make_checkpoint("bert", "seq", SENTIMENT_LABELS))
    read = []

    def texts():
        for text in CORPUS:
            read.append(text)
            yield text

    results = classify(texts(), batch_size=2)
    assert read == []  # nothing runs before the first result is asked for
    first = next(results)
    assert len(read) == 2
    assert_same(first, classify(CORPUS[0])[0])  # a batch of two vs one: equal within 1e-4
    assert len(list(results)) == len(CORPUS) - 1


def test_torch_dataset_input(make_checkpoint):
    classify = fastx.pipeline("text-classification", make_checkpoint("bert", "seq", SENTIMENT_LABELS))

    class Dataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(CORPUS)

        def __getitem__(self, i):
            return CORPUS[i]

    assert_same(list(classify(Dataset(), batch_size=4)), classify(CORPUS))


def test_batch_size_and_labels_checks():
    assert check_batch_size(None) is None and check_batch_size(3) == 3
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="batch_size"):
            check_batch_size(bad)

    class Config:
        id2label = {"0": "neg", "1": "pos"}
        labels = 3

    assert id2label(Config()) == {0: "neg", 1: "pos", 2: "LABEL_2"}  # JSON string keys; unnamed labels
