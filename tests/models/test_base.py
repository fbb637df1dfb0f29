"""PreTrainedModel.from_pretrained: dtype choice, missing / unexpected / misshapen tensors named."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from fastx.models import AutoModel

TINY = dict(
    vocab_size=50,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=40,
    max_position_embeddings=16,
)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(tmp_path)
    return tmp_path


def _rewrite(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_dtype_by_object_name_or_auto(checkpoint):
    assert AutoModel.from_pretrained(checkpoint, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert AutoModel.from_pretrained(checkpoint, dtype="float16").dtype == torch.float16
    assert AutoModel.from_pretrained(checkpoint, dtype="auto").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype: expected"):
        AutoModel.from_pretrained(checkpoint, dtype="int8")


def test_missing_tensor_is_named(checkpoint):
    _rewrite(checkpoint, lambda t: t.pop("encoder.layer.0.output.dense.weight"))
    with pytest.raises(ValueError, match="missing tensors for BertModel: encoder.layer.0.output.dense.weight"):
        AutoModel.from_pretrained(checkpoint)


def test_missing_piece_of_a_fused_projection_is_named(checkpoint):
    _rewrite(checkpoint, lambda t: t.pop("encoder.layer.0.attention.self.key.bias"))
    with pytest.raises(ValueError, match=r"lacks \['key'\] for packed parameter"):
        AutoModel.from_pretrained(checkpoint)


def test_unexpected_tensor_inside_the_model_is_named(checkpoint):
    _rewrite(checkpoint, lambda t: t.update({"encoder.layer.0.attention.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match="unexpected tensor 'encoder.layer.0.attention.extra.weight'"):
        AutoModel.from_pretrained(checkpoint)


def test_wrong_shape_is_named(checkpoint):
    _rewrite(checkpoint, lambda t: t.update({"pooler.dense.weight": torch.zeros(32, 31)}))
    with pytest.raises(ValueError, match=r"'pooler.dense.weight' has shape \(32, 31\), expected \(32, 32\)"):
        AutoModel.from_pretrained(checkpoint)


def test_unknown_architecture_lists_the_supported_ones(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(ValueError, match="architecture 'mamba' is not supported by fastx.*bert.*llama"):
        AutoModel.from_pretrained(checkpoint)
