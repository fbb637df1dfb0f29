"""device= and transformers' single-device device_map forms, checked before any weight moves."""

import pytest
import torch

from fastx.models.placement import resolve_device


@pytest.mark.parametrize(
    ("device", "device_map", "expected"),
    [
        (None, None, "cpu"),
        ("cpu", None, "cpu"),
        (None, "cpu", "cpu"),
        (None, {"": "cpu"}, "cpu"),
        (None, torch.device("cpu"), "cpu"),
        ("cpu", {"": "cpu"}, "cpu"),
        (None, "auto", "cuda" if torch.cuda.is_available() else "cpu"),
    ],
)
def test_single_device_forms(device, device_map, expected):
    assert resolve_device(device, device_map).type == expected


def test_a_split_map_is_refused_with_what_to_pass():
    with pytest.raises(ValueError, match=r"device_map: fastx loads a model on one device.*'model.layers.0'"):
        resolve_device(None, {"model.layers.0": 0, "lm_head": "cpu"})


def test_disagreeing_device_and_map():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device type")
    with pytest.raises(ValueError, match="disagree"):
        resolve_device("cpu", "cuda")


@pytest.mark.parametrize("bad", ["gpu", 3.5])
def test_bad_names_are_value_errors(bad):
    with pytest.raises(ValueError, match="device_map"):
        resolve_device(None, bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize(("device", "device_map"), [("cuda", None), (None, "cuda:1"), (None, 0)])
def test_cuda_without_a_cuda_device_names_the_argument(device, device_map):
    argument = "device" if device else "device_map"
    with pytest.raises(ValueError, match=rf"{argument}: 'cuda(:\d)?' asked for, and this torch has no CUDA device"):
        resolve_device(device, device_map)


def test_from_pretrained_takes_device_map(tmp_path):
    transformers = pytest.importorskip("transformers")
    from fastx import AutoModel

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=40
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    assert AutoModel.from_pretrained(tmp_path, device_map={"": "cpu"}).device.type == "cpu"
    with pytest.raises(ValueError, match="device_map"):
        AutoModel.from_pretrained(tmp_path, device_map={"encoder": "cpu", "pooler": "cpu"})
