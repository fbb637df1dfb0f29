"""The loader reports each checkpoint tensor to the callback set around a load (the CLI's bar)."""

import pytest
import torch

from fastx.models.loading_progress import loading_progress, tracked


def test_tracked_reports_each_entry_and_computes_the_total_only_when_watched():
    calls = []
    assert list(tracked(iter("abc"), total=lambda: pytest.fail("no callback: no total"))) == ["a", "b", "c"]
    with loading_progress(lambda done, total: calls.append((done, total))):
        assert list(tracked(iter("abc"), total=lambda: 3)) == ["a", "b", "c"]
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_a_safetensors_load_reports_every_tensor(tmp_path):
    transformers = pytest.importorskip("transformers")
    from fastx import AutoModel

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40
    )
    reference = transformers.BertModel(config)
    reference.save_pretrained(tmp_path)
    calls = []
    with loading_progress(lambda done, total: calls.append((done, total))):
        model = AutoModel.from_pretrained(tmp_path)
    total = len(reference.state_dict())
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == list(range(total + 1))
    assert model.embeddings.word_embeddings.weight.dtype == torch.float32
