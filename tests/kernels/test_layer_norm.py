"""LayerNorm kernel (fastx.kernels.layer_norm) against eager PyTorch, per NUMERICS.md."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fastx.kernels.layer_norm import MAX_FUSED_N, layer_norm
from fastx.testing import assert_matches_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# 1, a prime, non-powers of two, a typical hidden size, the streaming (multi-chunk) path.
SHAPES = [(1, 1), (3, 7), (5, 131), (2, 3, 384), (4, 1000), (2, MAX_FUSED_N + 37)]


def _reference(x, w, b, eps, residual=None):
    h = x if residual is None else x + residual  # eager adds in the storage dtype
    ref = F.layer_norm(h.double(), (h.shape[-1],), w.double(), b.double(), eps)
    eager = F.layer_norm(h, (h.shape[-1],), w, b, eps)
    return ref, eager, h


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_matches_eager(device, dtype, shape, with_residual):
    n = shape[-1]
    x = (torch.randn(shape, device=device) * 3 + 1).to(dtype)
    w = torch.randn(n, device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype) if with_residual else None
    ref, eager, h = _reference(x, w, b, 1e-5, residual)

    out = layer_norm(x, w, b, 1e-5, residual=residual)
    if with_residual:
        out, residual_out = out
        torch.testing.assert_close(residual_out, h, rtol=0, atol=0)
    assert out.dtype == dtype and out.shape == x.shape
    assert_matches_reference(out, ref, eager)


def test_layer_norm_without_affine_and_non_contiguous(device):
    base = torch.randn(6, 40, 97, device=device)
    x = base.transpose(0, 1)[:, ::2]  # (40, 3, 97): rows at irregular strides, copied once
    y = layer_norm(x, None, None, 1e-6)
    torch.testing.assert_close(y, F.layer_norm(x, (97,), eps=1e-6))
    sliced = base[..., :50]  # rows at a fixed stride with contiguous columns: no copy needed
    torch.testing.assert_close(layer_norm(sliced, None, None), F.layer_norm(sliced, (50,)))


def test_layer_norm_empty_input(device):
    x = torch.empty(0, 16, device=device)
    y, r = layer_norm(x, torch.ones(16, device=device), None, residual=x)
    assert y.shape == (0, 16) and r.shape == (0, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight": torch.ones(8)}, "weight: expected shape (16,)"),
        ({"weight": torch.ones(16, dtype=torch.float16)}, "weight: expected dtype torch.float32"),
        ({"residual": torch.ones(3, 15)}, "residual: expected shape (3, 16)"),
    ],
)
def test_layer_norm_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        layer_norm(torch.ones(3, 16), **kwargs)


def test_layer_norm_rejects_integer_input():
    with pytest.raises(ValueError, match="input: expected dtype float32, float16 or bfloat16"):
        layer_norm(torch.ones(3, 16, dtype=torch.int32))


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 9),
    n=st.integers(1, 300),
    eps=st.sampled_from([1e-12, 1e-5, 0.1]),
    affine=st.booleans(),
)
def test_layer_norm_any_row_shape(rows, n, eps, affine):
    """Property: for any row count and length, the kernel equals F.layer_norm in fp32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # fixtures don't mix with @given
    x = torch.randn(rows, n, device=device) * 5 - 2
    w, b = (torch.randn(n, device=device), torch.randn(n, device=device)) if affine else (None, None)
    torch.testing.assert_close(layer_norm(x, w, b, eps), F.layer_norm(x, (n,), w, b, eps))
