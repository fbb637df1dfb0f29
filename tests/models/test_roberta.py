"""RoBERTa family against transformers: tiny random checkpoints, padding on either side."""

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
from fastx.models.roberta import create_position_ids_from_input_ids

PAD = 1
# Odd sizes (NUMERICS.md): hidden 80 over 5 heads (head dim 16), 3 layers, intermediate 200.
# type_vocab_size 1 as in roberta-base; positions start at PAD + 1, hence max_position_embeddings 16
# leaves room for exactly 14 real tokens (see the length test).
TINY = dict(
    vocab_size=99,
    hidden_size=80,
    num_hidden_layers=3,
    num_attention_heads=5,
    intermediate_size=200,
    max_position_embeddings=16,
    type_vocab_size=1,
    pad_token_id=PAD,
    num_labels=3,
)
TASKS = {
    "base": (transformers.RobertaModel, AutoModel, "last_hidden_state"),
    "mlm": (transformers.RobertaForMaskedLM, AutoModelForMaskedLM, "logits"),
    "seq": (transformers.RobertaForSequenceClassification, AutoModelForSequenceClassification, "logits"),
    "tok": (transformers.RobertaForTokenClassification, AutoModelForTokenClassification, "logits"),
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def checkpoint(request, tmp_path_factory):
    hf_class, auto_class, field = TASKS[request.param]
    torch.manual_seed(0)
    # eager attention: transformers' SDPA path returns no attention probabilities
    reference = hf_class(transformers.RobertaConfig(**TINY, attn_implementation="eager")).eval()
    folder = tmp_path_factory.mktemp(f"roberta-{request.param}")
    reference.save_pretrained(folder)
    return reference, auto_class, folder, field, request.param


def _batch():
    torch.manual_seed(1)
    ids = torch.randint(2, 99, (3, 13))  # real tokens never equal PAD ...
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    ids[mask == 0] = PAD  # ... padding does, as a tokenizer writes it
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
    if task == "base":
        torch.testing.assert_close(got.pooler_output[real[:, 0]], expected.pooler_output[real[:, 0]], atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=0)
    assert len(got.attentions) == len(expected.attentions) == 3
    pair = real[:, :, None] & real[:, None, :]  # attention between real tokens only
    for mine, theirs in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(mine.permute(0, 2, 3, 1)[pair], theirs.permute(0, 2, 3, 1)[pair], atol=1e-5, rtol=0)


def test_position_ids_match_transformers_for_any_padding():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [1, 1, 0, 7, 8, 2], [0, 5, 1, 6, 2, 1], [1, 1, 1, 1, 1, 1]])
    expected = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
        ids, PAD
    )
    assert torch.equal(create_position_ids_from_input_ids(ids, PAD), expected)
    assert create_position_ids_from_input_ids(ids, PAD)[1].tolist() == [1, 1, 2, 3, 4, 5]  # left padding


@pytest.mark.parametrize("checkpoint", ["tok"], indirect=True)  # the position plumbing is shared by all tasks
def test_explicit_position_ids_and_no_mask(checkpoint):
    reference, auto_class, folder, field, task = checkpoint
    model = auto_class.from_pretrained(folder)
    ids = torch.randint(2, 99, (2, 7))
    positions = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])  # (1, L), broadcast over the batch
    with torch.no_grad():
        expected = reference(input_ids=ids, position_ids=positions.expand(2, 7)).logits
        expected_default = reference(input_ids=ids).logits
    torch.testing.assert_close(model(ids, position_ids=positions).logits, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(model(ids).logits, expected_default, atol=1e-4, rtol=0)


@pytest.mark.parametrize("checkpoint", ["base"], indirect=True)
def test_too_many_tokens_for_the_position_table(checkpoint):
    _, auto_class, folder, _, task = checkpoint
    model = auto_class.from_pretrained(folder)
    assert model(torch.randint(2, 99, (1, 14))).last_hidden_state.shape == (1, 14, 80)  # positions 2..15 fit
    with pytest.raises(ValueError, match="max_position_embeddings 16"):
        model(torch.randint(2, 99, (1, 15)))  # position 16 does not
    padded = torch.full((1, 15), PAD)  # 14 real tokens + 1 pad: fits, as in transformers
    padded[0, :14] = torch.randint(2, 99, (14,))
    assert model(padded, attention_mask=(padded != PAD).long()).last_hidden_state.shape == (1, 15, 80)


@pytest.mark.parametrize("checkpoint", ["seq"], indirect=True)
def test_config_surfaces_labels_and_rejects_broken_fields(checkpoint, tmp_path):
    _, _, folder, _, task = checkpoint
    config = AutoConfig.from_pretrained(folder)
    assert type(config).__name__ == "RobertaConfig" and config.pad_token_id == PAD and config.labels == 3
    data = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(data, pad_token_id=None)))
    with pytest.raises(ValueError, match="'pad_token_id' must be int"):
        AutoConfig.from_pretrained(tmp_path)
    del data["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing required field 'hidden_size'"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("checkpoint", ["mlm"], indirect=True)  # the MLM model runs every kernel RoBERTa uses
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
    config = transformers.RobertaConfig(**{**TINY, "num_labels": 2})
    reference = transformers.RobertaForQuestionAnswering(config).eval()
    reference.save_pretrained(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    ids, mask = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask)
    got = model(ids, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got.start_logits[real], expected.start_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.end_logits[real], expected.end_logits[real], atol=1e-4, rtol=0)
    # a SQuAD fine-tune of roberta-base may keep the base model's pooler: ignored, not an error
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "model.safetensors")
    tensors["roberta.pooler.dense.weight"] = torch.zeros(80, 80)
    tensors["roberta.pooler.dense.bias"] = torch.zeros(80)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path)(ids, attention_mask=mask)
    torch.testing.assert_close(reloaded.start_logits, got.start_logits)
