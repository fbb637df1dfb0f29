"""DistilBERT family against transformers: tiny random checkpoints, padding on either side."""

import json

import pytest
import torch
import transformers

from fastx.models import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

# Odd sizes (NUMERICS.md): dim 80 over 5 heads (head dim 16), 3 layers, hidden_dim 200.
TINY = dict(vocab_size=99, dim=80, n_layers=3, n_heads=5, hidden_dim=200, max_position_embeddings=64)
LABELS = {0: "NEGATIVE", 1: "NEUTRAL", 2: "POSITIVE"}
TASKS = {
    "base": (transformers.DistilBertModel, AutoModel, "last_hidden_state"),
    "mlm": (transformers.DistilBertForMaskedLM, AutoModelForMaskedLM, "logits"),
    "seq": (transformers.DistilBertForSequenceClassification, AutoModelForSequenceClassification, "logits"),
    "tok": (transformers.DistilBertForTokenClassification, AutoModelForTokenClassification, "logits"),
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def checkpoint(request, tmp_path_factory):
    hf_class, auto_class, field = TASKS[request.param]
    torch.manual_seed(0)
    # The base model uses the fixed sinusoidal position table (saved in the checkpoint like a
    # learned one), the others learned positions; the task models carry named labels, as the
    # SST-2 checkpoint behind transformers' sentiment pipeline does. Eager attention: the SDPA
    # path returns no attention probabilities.
    config = transformers.DistilBertConfig(
        **TINY, sinusoidal_pos_embds=request.param == "base", id2label=LABELS, attn_implementation="eager"
    )
    reference = hf_class(config).eval()
    folder = tmp_path_factory.mktemp(f"distilbert-{request.param}")
    reference.save_pretrained(folder)
    return reference, auto_class, folder, field, request.param


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(1, 99, (3, 13))
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    ids[mask == 0] = 0
    return ids, mask


def test_matches_transformers_with_padding_hidden_states_and_attentions(checkpoint):
    reference, auto_class, folder, field, task = checkpoint
    model = auto_class.from_pretrained(folder)
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    got = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    if task == "seq":  # read from position 0: only rows whose first token is real are comparable
        first_real = real[:, 0]
        torch.testing.assert_close(got.logits[first_real], expected.logits[first_real], atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(got[field][real], expected[field][real], atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=0)
    assert len(got.attentions) == len(expected.attentions) == 3
    pair = real[:, :, None] & real[:, None, :]  # attention between real tokens only
    for mine, theirs in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(mine.permute(0, 2, 3, 1)[pair], theirs.permute(0, 2, 3, 1)[pair], atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpoint", ["tok"], indirect=True)  # the position plumbing is shared by all tasks
def test_explicit_position_ids_and_no_mask(checkpoint):
    reference, auto_class, folder, field, task = checkpoint
    model = auto_class.from_pretrained(folder)
    ids = torch.randint(1, 99, (2, 7))
    positions = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])  # (1, L), broadcast over the batch
    with torch.no_grad():
        expected = reference(input_ids=ids, position_ids=positions).logits
        expected_default = reference(input_ids=ids).logits
    torch.testing.assert_close(model(ids, position_ids=positions).logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(model(ids).logits, expected_default, atol=1e-4, rtol=0)


@pytest.mark.parametrize("checkpoint", ["seq"], indirect=True)
def test_config_surfaces_id2label_and_rejects_broken_fields(checkpoint, tmp_path):
    _, _, folder, _, _ = checkpoint
    assert json.loads((folder / "config.json").read_text())["id2label"]["0"] == "NEGATIVE"  # string keys on disk
    config = AutoConfig.from_pretrained(folder)
    assert type(config).__name__ == "DistilBertConfig"
    assert config.id2label == LABELS and config.labels == 3 and config.hidden_size == 80  # int keys, as transformers
    assert AutoModelForSequenceClassification.from_pretrained(folder).config.id2label == LABELS
    data = json.loads((folder / "config.json").read_text())
    for broken, message in [
        (dict(data, n_heads="5"), "field 'n_heads' must be int"),
        (dict(data, activation="relu"), "activation 'relu' not supported"),
        ({k: v for k, v in data.items() if k != "dim"}, "missing required field 'dim'"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("checkpoint", ["mlm"], indirect=True)  # the MLM model runs every kernel DistilBERT uses
def test_runs_the_triton_kernels(checkpoint, monkeypatch, device):
    reference, auto_class, folder, field, task = checkpoint
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    model = auto_class.from_pretrained(folder, device=device, dtype=torch.float32)
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
    got = model(ids.to(device), attention_mask=mask.to(device)).logits.cpu()
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)


def test_question_answering_head_matches_transformers(tmp_path):
    torch.manual_seed(0)
    reference = transformers.DistilBertForQuestionAnswering(transformers.DistilBertConfig(**TINY)).eval()
    reference.save_pretrained(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask)
    got = model(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got.start_logits[real], expected.start_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.end_logits[real], expected.end_logits[real], atol=1e-4, rtol=0)
