"""fastx.ops.conv2d: F.conv2d's semantics, Triton only for the supported depthwise case."""

import pytest
import torch
import torch.nn.functional as F

import fastx.ops.conv as conv_ops
from fastx.ops.conv import conv2d
from fastx.testing import assert_matches_reference


@pytest.fixture
def kernel_calls(monkeypatch):
    """Count launches of the Triton depthwise kernel made through the op."""
    calls = []
    real = conv_ops._depthwise_conv2d_kernel

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(conv_ops, "_depthwise_conv2d_kernel", spy)
    return calls


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
@pytest.mark.parametrize("padding", [3, (3, 3), "same"])
def test_conv2d_depthwise_same_runs_kernel_under_triton(device, monkeypatch, kernel_calls, backend, padding):
    monkeypatch.setenv("FASTX_BACKEND", backend)
    x = torch.randn(2, 5, 6, 7, device=device)
    w = torch.randn(5, 1, 7, 7, device=device) / 7
    b = torch.randn(5, device=device)
    out = conv2d(x, w, b, stride=(1, 1), padding=padding, dilation=1, groups=5)
    torch.testing.assert_close(out, F.conv2d(x, w, b, padding=3, groups=5))
    expected_triton = backend == "triton" or (backend == "auto" and device == "cuda")
    assert len(kernel_calls) == int(expected_triton)
    if expected_triton:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv2d_triton_low_precision_channels_last(device, monkeypatch, kernel_calls, dtype):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    x = torch.randn(1, 6, 5, 5, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(6, 1, 3, 3, device=device) / 3).to(dtype)
    out = conv2d(x, w, None, padding=1, groups=6)
    ref = F.conv2d(x.double(), w.double(), padding=1, groups=6)
    assert_matches_reference(out, ref, F.conv2d(x, w, padding=1, groups=6))
    assert len(kernel_calls) == 1


@pytest.mark.parametrize(
    "w_shape, kwargs",
    [
        ((6, 3, 3, 3), {"padding": 1}),  # dense conv
        ((6, 1, 3, 3), {"padding": 1, "groups": 3}),  # grouped, not depthwise (C_in=3)
        ((3, 1, 3, 3), {"padding": 1, "groups": 3, "stride": 2}),  # strided
        ((3, 1, 3, 3), {"padding": 2, "groups": 3, "dilation": 2}),  # dilated
        ((3, 1, 3, 3), {"padding": 0, "groups": 3}),  # valid
        ((3, 1, 3, 3), {"padding": "valid", "groups": 3}),
        ((3, 1, 3, 3), {"padding": (1, 0), "groups": 3}),  # asymmetric padding
        ((3, 1, 2, 2), {"padding": "same", "groups": 3}),  # even kernel
        ((3, 1, 3, 5), {"padding": (1, 2), "groups": 3}),  # non-square kernel
        ((6, 1, 3, 3), {"padding": 1, "groups": 3}),  # depthwise multiplier 2
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on the even case
def test_conv2d_other_configurations_run_eager(monkeypatch, kernel_calls, w_shape, kwargs):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    x = torch.randn(2, 3, 7, 8)
    w = torch.randn(w_shape)
    b = torch.randn(w_shape[0])
    torch.testing.assert_close(conv2d(x, w, b, **kwargs), F.conv2d(x, w, b, **kwargs))
    assert kernel_calls == []


def test_conv2d_unbatched_runs_eager(monkeypatch, kernel_calls):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    x = torch.randn(3, 6, 6)  # unbatched (C, H, W): torch supports it, the kernel does not
    w = torch.randn(3, 1, 3, 3)
    torch.testing.assert_close(conv2d(x, w, None, padding=1, groups=3), F.conv2d(x, w, None, padding=1, groups=3))
    assert kernel_calls == []


def test_conv2d_propagates_torch_errors(monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    with pytest.raises(RuntimeError):
        conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), padding=1, groups=4)  # C_in/groups mismatch
    with pytest.raises(RuntimeError):  # mixed dtypes: not the kernel's case, so torch's own error
        conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3, dtype=torch.bfloat16), padding=1, groups=4)
