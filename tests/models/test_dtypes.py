"""fastx.models.dtypes: the dtype a model loads in when the caller names none, and dtype= parsing."""

import pytest
import torch

from fastx.models import dtypes


@pytest.mark.parametrize(
    "declared, bf16_ok, expected",
    [
        ({"dtype": "bfloat16"}, True, torch.bfloat16),
        ({"torch_dtype": "float16"}, True, torch.float16),
        ({"dtype": "float32"}, True, torch.bfloat16),  # an fp32 checkpoint still serves in half precision
        ({}, True, torch.bfloat16),
        ({"dtype": "bfloat16"}, False, torch.float16),  # pre-Ampere: no bf16
        ({}, False, torch.float16),
    ],
)
def test_cuda_default_is_the_checkpoints_half_precision(monkeypatch, declared, bf16_ok, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert dtypes.default_dtype("cuda", declared) == expected
    assert dtypes.resolve_dtype(None, declared, torch.device("cuda:1")) == expected


@pytest.mark.parametrize("amx, expected", [(False, torch.float32), (True, torch.bfloat16)])
def test_cpu_default_follows_bf16_matrix_units(monkeypatch, amx, expected):
    monkeypatch.setattr(dtypes, "cpu_has_bf16_matrix_units", lambda: amx)
    assert dtypes.default_dtype("cpu", {"dtype": "bfloat16"}) == expected
    assert dtypes.default_dtype(None, {}) == expected


def test_explicit_dtype_wins_and_auto_is_the_checkpoints():
    assert dtypes.resolve_dtype("bf16", {}, "cpu") == torch.bfloat16
    assert dtypes.resolve_dtype(torch.float32, {"dtype": "bfloat16"}, "cuda") == torch.float32
    assert dtypes.resolve_dtype("auto", {"torch_dtype": "torch.float16"}, "cpu") == torch.float16
    assert dtypes.resolve_dtype("auto", {}, "cpu") == torch.float32
    with pytest.raises(ValueError, match="dtype: expected float32, float16 or bfloat16"):
        dtypes.resolve_dtype(torch.int8, {}, "cpu")
    with pytest.raises(ValueError, match="dtype: expected a torch dtype"):
        dtypes.resolve_dtype("float8", {}, "cpu")
