"""fastx.ops.int4_linear: torch's int4 / int8 weight-only CPU GEMMs behind a Linear's interface.

The kernels compute in bf16, so the reference is the same 4-bit (or 8-bit) weights dequantized in fp32,
multiplied by the input rounded to bf16 the way the layer rounds it: what is left is the kernel's bf16
scales and its bf16 result (relative error ~2^-8). The error must also be far from zero against the
fp32 weight (a layer that ran the fp32 GEMM would pass a loose bound).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastx.ops.int4_linear import (
    GROUP,
    Int4Linear,
    Int8WeightLinear,
    int4_available,
    quantize_int4,
    round_to_int4,
)
from fastx.ops.linear import Linear

pytestmark = pytest.mark.skipif(not int4_available(), reason="this torch has no int4 CPU GEMM")


def _dequantized(q, scale, minimum):
    n, k = q.shape
    return (q.float().view(n, k // GROUP, GROUP) * scale.unsqueeze(-1) + minimum.unsqueeze(-1)).view(n, k)


def _relative(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


def test_round_to_int4_is_nearest_level_of_each_group():
    weight = torch.randn(5, 96)
    weight[1, :32] = 0.25  # a constant group: scale 0, every value exact
    q, scale, minimum = round_to_int4(weight)
    assert q.dtype == torch.uint8 and q.max() <= 15 and scale.shape == minimum.shape == (5, 3)
    assert scale[1, 0] == 0 and torch.equal(_dequantized(q, scale, minimum)[1, :32], weight[1, :32])
    step = scale.repeat_interleave(GROUP, dim=1)
    assert ((_dequantized(q, scale, minimum) - weight).abs() <= step / 2 + 1e-6).all()
    with pytest.raises(ValueError, match=r"weight: expected in_features a multiple of 32 for int4 groups, got 40"):
        round_to_int4(torch.randn(4, 40))


@pytest.mark.parametrize("n", [16, 17, 48])  # 17: not a multiple of 16, padded for the packing
@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("bias", [False, True])
def test_int4_equals_its_dequantized_weights(n, m, bias):
    torch.manual_seed(n * 100 + m)
    weight, b = torch.randn(n, 96), torch.randn(n) if bias else None
    q, scale, minimum = round_to_int4(weight)
    layer = Int4Linear(q, scale, minimum, b)
    x = torch.randn(m, 96)
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    expected = F.linear(x.bfloat16().float(), _dequantized(q, scale, minimum), b)
    assert _relative(got, expected) < 2e-2
    assert _relative(got, F.linear(x, weight, b)) > 1e-3  # really 4-bit
    projected = layer.project(x.view(m, 1, 96))
    assert projected.shape == (m, 1, n)
    torch.testing.assert_close(projected.view(m, n) + (b if bias else 0), got, rtol=0, atol=1e-5)


def test_int8_weight_linear_is_close_and_really_int8():
    weight, b = torch.randn(40, 64), torch.randn(40)
    layer = Int8WeightLinear(weight, b)
    x = torch.randn(3, 64)
    relative = _relative(layer(x), F.linear(x, weight, b))
    assert 1e-4 < relative < 2e-2
    assert layer.qweight.dtype == torch.int8


def test_quantize_int4_replaces_every_fastx_linear_and_keeps_the_head_8_bit():
    model = nn.Sequential()
    model.add_module("proj", Linear(64, 32))
    model.add_module("lm_head", Linear(32, 16, bias=False))
    x = torch.randn(5, 64)
    expected = model(x)
    assert quantize_int4(model) == 2
    assert isinstance(model.proj, Int4Linear) and isinstance(model.lm_head, Int8WeightLinear)
    assert F.cosine_similarity(model(x).flatten(), expected.flatten(), dim=0) > 0.99


def test_refuses_what_it_cannot_pack():
    model = nn.Sequential(Linear(40, 8))
    with pytest.raises(ValueError, match=r"quantization='int4': 0 has in_features 40, expected a multiple of 32"):
        quantize_int4(model)
    assert isinstance(model[0], Linear)  # nothing changed
    q, scale, minimum = round_to_int4(torch.randn(8, 64))
    with pytest.raises(ValueError, match=r"scale/minimum \(N, K / 32\), got q \(8, 64\), scale \(8, 1\)"):
        Int4Linear(q, scale[:, :1], minimum, None)
