"""fastx.ops activations: torch.nn.functional's signatures and results on both backends."""

import pytest
import torch
import torch.nn.functional as F

from fastx.ops import activations as ops

# sigmoid's exp(-x) overflows to inf for x << 0 (giving 0, as intended); numpy warns under the interpreter.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run each test on eager PyTorch and on the Triton kernel (the interpreter on a CPU)."""
    monkeypatch.setenv("FASTX_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_functional(device, backend, approximate, dtype):
    x = (torch.randn(2, 5, 97, device=device) * 3).to(dtype)
    expected = F.gelu(x, approximate=approximate)
    # bf16: the kernel rounds once from fp32, eager too; allow one bf16 ulp for the differing fp32 formulas.
    tol = {} if dtype == torch.float32 else {"rtol": 8e-3, "atol": 8e-3}
    torch.testing.assert_close(ops.gelu(x, approximate=approximate), expected, **tol)
    torch.testing.assert_close(ops.gelu(x, approximate), expected, **tol)  # positional, as F.gelu allows


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_matches_functional(device, backend, approximate):
    x = torch.randn(3, 7, 130, device=device)
    b = torch.randn(130, device=device)
    torch.testing.assert_close(ops.bias_gelu(x, b, approximate), F.gelu(x + b, approximate=approximate))


def test_silu_matches_functional(device, backend):
    x = torch.randn(4, 3, 65, device=device) * 4
    out = ops.silu(x)
    torch.testing.assert_close(out, F.silu(x))
    assert out.data_ptr() != x.data_ptr()


def test_silu_inplace_writes_into_input(device, backend):
    base = torch.randn(6, 40, device=device)
    x = base.t()  # non-contiguous: the result must land in x's own layout
    expected = F.silu(x)
    out = ops.silu(x, inplace=True)
    assert out is x
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(base, expected.t())


def test_silu_and_mul_matches_eager(device, backend):
    x = torch.randn(2, 9, 2 * 75, device=device)
    torch.testing.assert_close(ops.silu_and_mul(x), F.silu(x[..., :75]) * x[..., 75:])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ops.gelu(torch.ones(3, 4), approximate="exact"), "approximate: expected 'none' or 'tanh', got 'ex"),
        (lambda: ops.bias_gelu(torch.ones(3, 4), torch.ones(3)), r"bias: expected shape \(4,\), got \(3,\)"),
        (lambda: ops.bias_gelu(torch.ones(3, 4), torch.ones(4), "x"), "approximate: expected 'none' or 'tanh'"),
        (lambda: ops.silu_and_mul(torch.ones(3, 5)), "input: expected an even last dimension"),
    ],
)
def test_activation_ops_reject_bad_arguments(backend, call, message):
    with pytest.raises(ValueError, match=message):
        call()
