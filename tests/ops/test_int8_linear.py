"""fastx.ops.int8_linear: torch's dynamic int8 GEMM behind a Linear's interface, against F.linear in fp32.

int8 is approximate: the bound is the quantization error's own scale. Per-channel int8 weights (error
<= scale / 2 per weight) and 7-bit activations give a relative error of about 1% on random data; 3% is
allowed, and the error must be far from zero (a layer that ran the fp32 GEMM would pass a loose bound).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastx.ops.int8_linear import Int8DynamicLinear, int8_available, quantize_int8
from fastx.ops.linear import Linear

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no x86/fbgemm quantized engine")


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("bias", [False, True])
def test_close_to_fp32_and_really_int8(m, bias):
    weight, b = torch.randn(37, 96), torch.randn(37) if bias else None
    layer = Int8DynamicLinear(weight, b)
    x = torch.randn(m, 96)
    got, expected = layer(x), F.linear(x, weight, b)
    relative = ((got - expected).norm() / expected.norm()).item()
    assert 1e-4 < relative < 0.03
    assert layer(x.view(m, 1, 96)).shape == (m, 1, 37)


def test_quantize_int8_replaces_every_fastx_linear():
    model = nn.Sequential(Linear(64, 32), nn.ReLU(), Linear(32, 16, bias=False))
    x = torch.randn(5, 64)
    expected = model(x)
    assert quantize_int8(model) == 2
    assert all(isinstance(model[i], Int8DynamicLinear) for i in (0, 2))
    assert F.cosine_similarity(model(x).flatten(), expected.flatten(), dim=0) > 0.999


def test_refuses_non_fp32_or_non_cpu_weights():
    model = nn.Sequential(Linear(8, 8).to(torch.bfloat16))
    with pytest.raises(ValueError, match=r"quantization='int8': expected float32 CPU weights, 0 is torch.bfloat16"):
        quantize_int8(model)
    assert isinstance(model[0], Linear)  # nothing changed
    with pytest.raises(ValueError, match="expected a 2-D float32 CPU weight"):
        Int8DynamicLinear(torch.randn(8), None)
