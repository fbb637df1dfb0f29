"""Activation kernels (fastx.kernels.activations) against eager PyTorch, per NUMERICS.md."""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.activations import TILE, gelu, silu, silu_and_mul
from fastx.testing import assert_matches_reference

# sigmoid(z) = 1 / (1 + exp(-z)) overflows exp to inf for z << 0 (giving 0, as intended, on a GPU
# too); numpy warns about it under the interpreter.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Output row lengths: 1, a prime, non-powers of two, a typical width, one past the tile
# (several column blocks per row) and a row longer than 16384.
SHAPES = [(1, 1), (3, 7), (5, 131), (2, 3, 384), (4, 1000), (3, TILE + 1), (2, 16384 + 37)]
# name -> (kernel call, eager call); eager runs in the input dtype or, for the reference, in fp64.
OPS = {
    "gelu": (lambda x, b: gelu(x), lambda x, b: F.gelu(x)),
    "gelu_tanh": (lambda x, b: gelu(x, "tanh"), lambda x, b: F.gelu(x, approximate="tanh")),
    "bias_gelu": (lambda x, b: gelu(x, bias=b), lambda x, b: F.gelu(x + b)),
    "bias_gelu_tanh": (lambda x, b: gelu(x, "tanh", b), lambda x, b: F.gelu(x + b, approximate="tanh")),
    "silu": (lambda x, b: silu(x), lambda x, b: F.silu(x)),
    "silu_and_mul": (lambda x, b: silu_and_mul(x), lambda x, b: _silu_and_mul_eager(x)),
}


def _silu_and_mul_eager(x):
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def _inputs(op, shape, dtype, device):
    shape = (*shape[:-1], 2 * shape[-1]) if op == "silu_and_mul" else shape
    x = (torch.randn(shape, device=device) * 3).to(dtype)  # spans both tails of the curves
    b = torch.randn(shape[-1], device=device).to(dtype)
    return x, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", list(OPS))
def test_activation_matches_eager(device, op, shape, dtype):
    kernel, eager_fn = OPS[op]
    x, b = _inputs(op, shape, dtype, device)
    out = kernel(x, b)
    eager = eager_fn(x, b)
    # fp64 of the same inputs; bias_gelu's kernel keeps x + b unrounded, so the reference does too.
    ref = eager_fn(x.double(), b.double())
    assert out.dtype == dtype and out.shape == eager.shape and out.is_contiguous()
    assert_matches_reference(out, ref, eager, what=op)


@pytest.mark.parametrize("op", list(OPS))
def test_activation_non_contiguous(device, op):
    kernel, eager_fn = OPS[op]
    base, b = _inputs(op, (6, 5, 194), torch.float32, device)
    # Rows at irregular strides (copied once) and a column slice (rows at a fixed stride, read in place).
    width = base.shape[-1] // 2
    for x in (base.transpose(0, 1)[:, ::2], base[..., : 2 * (width // 2)], base[::2, 1:4]):
        bias = b[: x.shape[-1]]
        strides = tuple(x.stride())
        torch.testing.assert_close(kernel(x, bias), eager_fn(x, bias), msg=lambda m, s=strides: f"{op} {s}: {m}")


def test_silu_and_mul_reads_a_slice_of_a_wider_projection(device):
    fused = torch.randn(7, 3 * 50, device=device)
    x = fused[:, 50:]  # (7, 100): rows at stride 150, gate and up halves inside
    torch.testing.assert_close(silu_and_mul(x), _silu_and_mul_eager(x))


def test_activation_extreme_values(device):
    x = torch.tensor([-1e4, -100.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 100.0, 1e4], device=device)
    for approximate in ("none", "tanh"):
        torch.testing.assert_close(gelu(x, approximate), F.gelu(x, approximate=approximate))
    torch.testing.assert_close(silu(x), F.silu(x))


def test_activation_empty_input(device):
    assert gelu(torch.empty(0, 16, device=device), bias=torch.ones(16, device=device)).shape == (0, 16)
    assert silu(torch.empty(4, 0, device=device)).shape == (4, 0)
    assert silu_and_mul(torch.empty(0, 3, 16, device=device)).shape == (0, 3, 8)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gelu(torch.ones(3, 16), approximate="erf"), "approximate: expected 'none' or 'tanh', got 'erf'"),
        (lambda: gelu(torch.ones(3, 16), bias=torch.ones(8)), "bias: expected shape (16,), got (8,)"),
        (lambda: gelu(torch.ones(3, 16), bias=torch.ones(16).half()), "bias: expected dtype torch.float32"),
        (lambda: silu_and_mul(torch.ones(3, 15)), "x: expected an even last dimension (gate and up halves), got 15"),
        (lambda: silu(torch.ones(3, 16, dtype=torch.int32)), "x: expected dtype float32, float16 or bfloat16"),
        (lambda: silu(torch.tensor(1.0)), "x: expected at least 1 dimension, got a 0-d tensor"),
    ],
)
def test_activation_rejects_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
