"""Convolution ops with torch.nn.functional's signatures (ConvNeXt's depthwise 7x7 on Triton)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastx.kernels._common import SUPPORTED_DTYPES
from fastx.kernels.depthwise_conv import depthwise_conv2d as _depthwise_conv2d_kernel
from fastx.ops._backend import use_triton


def _pair(value) -> tuple | None:
    """(a, b) from an int or a length-2 sequence; None for anything else (torch then decides)."""
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return tuple(value)
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return (value[0], value[0])
    return None


def _is_supported_depthwise(input, weight, bias, stride, padding, dilation, groups) -> bool:
    """True for the one configuration the Triton kernel implements (see conv2d's docstring)."""
    if not (isinstance(input, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return False
    if input.dim() != 4 or weight.dim() != 4:
        return False
    channels = input.shape[1]
    c_out, c_per_group, kh, kw = weight.shape
    if not (groups == channels == c_out and c_per_group == 1 and kh == kw and kh % 2 == 1):
        return False
    if _pair(stride) != (1, 1) or _pair(dilation) != (1, 1):
        return False
    if not (padding == "same" or _pair(padding) == (kh // 2, kh // 2)):
        return False
    tensors = [t for t in (input, weight, bias) if t is not None]
    if input.dtype not in SUPPORTED_DTYPES or any(t.dtype != input.dtype for t in tensors):
        return False
    if bias is not None and tuple(bias.shape) != (channels,):
        return False
    return len({t.device for t in tensors}) == 1


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Drop-in for F.conv2d; runs fastx's Triton kernel for depthwise "same" convolutions only.

    The Triton path (when `use_triton` chooses it) covers exactly: groups == in_channels ==
    out_channels with weight (C, 1, k, k), k odd, stride 1, dilation 1 and padding k // 2 (an int,
    a pair, or "same"), with input, weight and bias of one float dtype on one device. It returns a
    channels_last tensor (values equal to F.conv2d's; memory format may differ) and is for
    inference: it records no autograd graph. Input in either memory format is accepted (NCHW is
    converted to channels_last once).

    Every other configuration (dense, grouped, strided, dilated or "valid" convolutions, unbatched
    input, ...) runs eager F.conv2d: those are not the hot op of the models fastx serves and cuDNN
    handles them well. Arguments torch rejects raise torch's own error.
    """
    if _is_supported_depthwise(input, weight, bias, stride, padding, dilation, groups) and use_triton(
        input, weight, bias
    ):
        return _depthwise_conv2d_kernel(input, weight, bias)
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)
