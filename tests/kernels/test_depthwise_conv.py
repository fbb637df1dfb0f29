"""Depthwise conv kernel (fastx.kernels.depthwise_conv) against eager F.conv2d, per NUMERICS.md."""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.depthwise_conv import depthwise_conv2d, depthwise_launch_config
from fastx.testing import assert_matches_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KERNEL_SIZES = [3, 5, 7]
# (N, C, H, W): size 1 everywhere; image smaller than the kernel; image equal to a 7x7 kernel;
# non-square prime image with C=13 (not a multiple of the 16-wide channel block).
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 5), (1, 13, 7, 7), (2, 13, 9, 11)]
CHANNELS_LAST = torch.channels_last


def _make(shape, k, dtype, device, with_bias=True):
    channels = shape[1]
    x = torch.randn(shape, device=device).to(dtype)
    w = (torch.randn(channels, 1, k, k, device=device) / k).to(dtype)  # ~unit-variance outputs
    b = torch.randn(channels, device=device).to(dtype) if with_bias else None
    return x, w, b


def _reference(x, w, b):
    """fp64 reference and eager F.conv2d in x's dtype (the peer whose error sets the bound)."""
    k, channels = w.shape[-1], x.shape[1]
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=k // 2, groups=channels)
    eager = F.conv2d(x, w, b, padding=k // 2, groups=channels)
    return ref, eager


def _check(out, x, w, b):
    ref, eager = _reference(x, w, b)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    assert_matches_reference(out, ref, eager)


def _grid_cases():
    """Every dtype x shape, with k, memory format and bias rotated so each dtype meets all three k,
    both layouts and both bias paths (the full product is too slow for the interpreter)."""
    cases = []
    for d, dtype in enumerate(DTYPES):
        for s, shape in enumerate(SHAPES):
            k = KERNEL_SIZES[(s + d) % 3]
            cases.append(pytest.param(dtype, k, shape, (s + d) % 2 == 1, s % 2 == 0, id=f"{dtype}-k{k}-{shape}"))
    # fp32 also sweeps k on the prime, non-square image, in both layouts.
    for k in KERNEL_SIZES:
        cases.append(pytest.param(torch.float32, k, (2, 13, 9, 11), k != 5, True, id=f"fp32-sweep-k{k}"))
    return cases


@pytest.mark.parametrize("dtype, k, shape, channels_last, with_bias", _grid_cases())
def test_depthwise_conv_matches_eager(device, dtype, k, shape, channels_last, with_bias):
    x, w, b = _make(shape, k, dtype, device, with_bias)
    if channels_last:
        x = x.contiguous(memory_format=CHANNELS_LAST)
    _check(depthwise_conv2d(x, w, b), x, w, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_depthwise_conv_both_bias_paths(device, dtype, with_bias):
    x, w, b = _make((1, 3, 5, 6), 3, dtype, device, with_bias)
    _check(depthwise_conv2d(x, w, b), x, w, b)


def test_depthwise_conv_convnext_width(device):
    # The medium case: C=96 (ConvNeXt-T stage 1) spans several channel blocks and pixel tiles.
    assert 96 // depthwise_launch_config(96)["BLOCK_C"] > 1
    x, w, b = _make((1, 96, 7, 9), 7, torch.bfloat16, device)
    _check(depthwise_conv2d(x.contiguous(memory_format=CHANNELS_LAST), w, b), x, w, b)


def test_depthwise_conv_non_contiguous_inputs(device):
    big = torch.randn(3, 20, 12, 13, device=device)
    w = torch.randn(13, 1, 5, 5, device=device)
    b = torch.randn(13, device=device)
    # NCHW slice: channels not at unit stride, converted to channels_last once.
    x = big[::2, 3:16, 1:10, 2:13]
    _check(depthwise_conv2d(x, w, b), x, w, b)
    # Channels-last slice: unit channel stride with padded pixel/row strides, read in place.
    big_cl = big.contiguous(memory_format=CHANNELS_LAST)
    x_cl = big_cl[:, 5:18, 2:11, 1:12]
    assert x_cl.stride(1) == 1 and not x_cl.is_contiguous(memory_format=CHANNELS_LAST)
    _check(depthwise_conv2d(x_cl, w, b), x_cl, w, b)
    # Non-contiguous weight (a transposed view) and bias (a strided slice).
    w_t = w.transpose(2, 3).contiguous().transpose(2, 3)
    b_s = torch.randn(26, device=device)[::2]
    _check(depthwise_conv2d(x, w_t, b_s), x, w_t, b_s)


def test_depthwise_conv_empty_batch(device):
    x = torch.empty(0, 4, 5, 5, device=device)
    y = depthwise_conv2d(x, torch.ones(4, 1, 3, 3, device=device), torch.ones(4, device=device))
    assert y.shape == (0, 4, 5, 5)


@pytest.mark.parametrize(
    "x_shape, w_shape, b_shape, kwargs, message",
    [
        ((2, 4, 5, 5), (3, 1, 3, 3), None, {}, "weight: expected 4 output channels"),
        ((2, 4, 5, 5), (4, 2, 3, 3), None, {}, "weight: expected shape (C, 1, k, k)"),
        ((2, 4, 5, 5), (4, 1, 3), None, {}, "weight: expected shape (C, 1, k, k)"),
        ((2, 4, 5, 5), (4, 1, 4, 4), None, {}, "weight: expected an odd square kernel (k, k), got (4, 4)"),
        ((2, 4, 5, 5), (4, 1, 3, 5), None, {}, "weight: expected an odd square kernel (k, k), got (3, 5)"),
        ((2, 4, 5, 5), (4, 1, 3, 3), (5,), {}, "bias: expected shape (4,)"),
        ((4, 5, 5), (4, 1, 3, 3), None, {}, "input: expected a 4-D (N, C, H, W) tensor"),
        ((2, 4, 5, 5), (4, 1, 3, 3), None, {"w_dtype": torch.float16}, "weight: expected dtype torch.float32"),
        ((2, 4, 5, 5), (4, 1, 3, 3), (4,), {"b_dtype": torch.bfloat16}, "bias: expected dtype torch.float32"),
        ((2, 4, 5, 5), (4, 1, 3, 3), None, {"x_dtype": torch.int32}, "input: expected dtype float32"),
    ],
)
def test_depthwise_conv_rejects_bad_arguments(x_shape, w_shape, b_shape, kwargs, message):
    x = torch.ones(x_shape, dtype=kwargs.get("x_dtype", torch.float32))
    w = torch.ones(w_shape, dtype=kwargs.get("w_dtype", torch.float32))
    b = None if b_shape is None else torch.ones(b_shape, dtype=kwargs.get("b_dtype", torch.float32))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        depthwise_conv2d(x, w, b)


def test_depthwise_conv_rejects_device_mismatch():
    x = torch.ones(1, 2, 3, 3)
    w = torch.ones(2, 1, 3, 3, device="meta")
    with pytest.raises(ValueError, match="expected all tensors on one device"):
        depthwise_conv2d(x, w)
