"""Depthwise 2-D convolution (groups == channels), stride 1, "same" zero padding: ConvNeXt's 7x7.

Legend: N = batch, C = channels, H, W = image height and width, K = kernel size (odd, square),
P = output pixels N*H*W flattened in (n, h, w) order.

The kernel works channels-last (NHWC memory): for a fixed pixel the channels are contiguous, so a
tile of BLOCK_C channels is one coalesced load, and every tap of the K x K window reads the same
kind of tile shifted by a whole pixel. Each program owns BLOCK_P output pixels x BLOCK_C channels
and walks the K*K taps, masking taps that fall outside the image (the zero padding). Neighbouring
programs read overlapping windows, which the L1/L2 caches are meant to serve so that DRAM sees each
input about once (a design intent: no GPU has timed this kernel yet).
An NCHW-contiguous input is converted once with `.contiguous(memory_format=torch.channels_last)`;
the output is always channels_last, which is free downstream because a ConvNeXt block permutes to
NHWC right after this convolution.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastx.kernels._common import (
    check_float,
    check_same_device,
    check_same_dtype,
    check_vector,
    next_power_of_2,
    on_input_device,
)
from fastx.kernels.aot import AotConfig, configs_from_launches

# Output elements per program (BLOCK_P * BLOCK_C): 1024 over 4 warps is 8 fp32 accumulators per
# thread. NOTE: the compile report (no stride specialisation, so no vector loads) gives 7x7 bf16
# 135 registers on sm_90 at 1024 and 255 + 280 B spilled at 2048.
TILE_ELEMENTS = 1024
# Widest channel tile: 64 channels is one 128-byte line per pixel in 16-bit dtypes.
MAX_BLOCK_C = 64


@triton.jit
def _depthwise_conv2d_fwd_kernel(
    X,  # (N, C, H, W) input, channels-last memory: unit stride along C
    Wt,  # (C, 1, K, K) weight, any strides
    B,  # (C,) bias; unused unless HAS_BIAS
    Y,  # (N, H, W, C) output memory, contiguous: the (N, C, H, W) channels_last tensor
    P,  # N * H * W, number of output pixels
    C,  # channels
    H,  # image height
    W,  # image width
    stride_xn,  # elements between consecutive images of X
    stride_xh,  # elements between consecutive rows of X
    stride_xw,  # elements between consecutive pixels of a row of X
    stride_wc,  # elements between consecutive channels of Wt
    stride_wh,  # elements between consecutive kernel rows of Wt
    stride_ww,  # elements between consecutive kernel columns of Wt
    K: tl.constexpr,  # kernel size (odd); padding K // 2 keeps H x W
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,  # output pixels per program
    BLOCK_C: tl.constexpr,  # channels per program
):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    # int64: N*H*W*C elements can pass 2^31 on large activations.
    p = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    p_mask = p < P
    c_mask = c < C
    # -- output pixel -> (n, h, w), once per program --
    w = p % W
    h = (p // W) % H
    n = p // (W * H)
    x_pix = n * stride_xn + h * stride_xh + w * stride_xw  # (BLOCK_P,) int64 offset of the centre
    x_ptrs = X + x_pix[:, None] + c[None, :]  # (BLOCK_P, BLOCK_C)
    w_ptrs = Wt + c * stride_wc  # (BLOCK_C,)

    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    PAD: tl.constexpr = K // 2
    # Kernel rows are a runtime loop, columns unrolled (K loads in flight per row): unrolling
    # all K*K taps lets the compiler hoist every load and spill (5.8 KB for 7x7 bf16 on sm_90).
    for i in range(K):
        ih = h + (i - PAD)
        row_ok = p_mask & (ih >= 0) & (ih < H)  # (BLOCK_P,) rows outside the image are zero padding
        for j in tl.static_range(K):
            iw = w + (j - PAD)
            ok = row_ok & (iw >= 0) & (iw < W)  # (BLOCK_P,)
            # The tap is a whole-pixel shift of the centre pointers: one scalar offset per tap.
            shift = (i - PAD) * stride_xh + (j - PAD) * stride_xw
            x = tl.load(x_ptrs + shift, mask=ok[:, None] & c_mask[None, :], other=0.0)
            wt = tl.load(w_ptrs + i * stride_wh + j * stride_ww, mask=c_mask, other=0.0)
            acc += x.to(tl.float32) * wt.to(tl.float32)[None, :]

    # -- fused bias, cast once at the store --
    if HAS_BIAS:
        acc += tl.load(B + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    y_ptrs = Y + p[:, None] * C + c[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


def depthwise_launch_config(channels: int) -> dict:
    """Tile shape and warps for `channels`; shared by the launcher and aot_configs.

    BLOCK_C is the widest power of two up to MAX_BLOCK_C that divides C (C=96 -> 32, no masked
    half tile), else the next power of two of a small C; BLOCK_P fills the tile to TILE_ELEMENTS.
    """
    block_c = MAX_BLOCK_C
    while block_c > 8 and channels % block_c:
        block_c //= 2
    if channels % block_c:
        block_c = min(next_power_of_2(channels), MAX_BLOCK_C)
    return {"BLOCK_P": TILE_ELEMENTS // block_c, "BLOCK_C": block_c, "num_warps": 4}


def _check(x, weight, bias):
    check_float("input", x)
    check_float("weight", weight)
    if x.dim() != 4:
        raise ValueError(f"input: expected a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    check_same_device(input=x, weight=weight, bias=bias)
    check_same_dtype("input", x, weight=weight, bias=bias)
    channels = x.shape[1]
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"weight: expected shape (C, 1, k, k) of a depthwise kernel, got {tuple(weight.shape)}")
    if weight.shape[0] != channels:
        raise ValueError(
            f"weight: expected {channels} output channels (the input's C), got {weight.shape[0]} "
            f"(shape {tuple(weight.shape)})"
        )
    kh, kw = weight.shape[2], weight.shape[3]
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"weight: expected an odd square kernel (k, k), got ({kh}, {kw})")
    check_vector("bias", bias, channels)


@on_input_device
def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.conv2d(x, weight, bias, padding=k // 2, groups=C) for weight (C, 1, k, k), k odd.

    Returns an (N, C, H, W) tensor in channels_last memory format and x's dtype (fp32
    accumulation). An input whose channels are not at unit stride (e.g. NCHW-contiguous) is
    converted once with `.contiguous(memory_format=torch.channels_last)`; a channels-last view
    with other strides (e.g. a slice) is read in place.
    """
    _check(x, weight, bias)
    n_img, channels, height, width = x.shape
    y = torch.empty((n_img, channels, height, width), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if y.numel() == 0:
        return y
    if x.stride(1) != 1 and channels > 1:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = bias.contiguous() if bias is not None else None  # the kernel reads it at unit stride
    k = weight.shape[-1]
    n_pix = n_img * height * width
    cfg = depthwise_launch_config(channels)
    grid = (triton.cdiv(n_pix, cfg["BLOCK_P"]), triton.cdiv(channels, cfg["BLOCK_C"]))
    _depthwise_conv2d_fwd_kernel[grid](
        x,
        weight,
        bias if bias is not None else weight,
        y,
        n_pix,
        channels,
        height,
        width,
        x.stride(0),
        x.stride(2),
        x.stride(3),
        weight.stride(0),
        weight.stride(2),
        weight.stride(3),
        K=k,
        HAS_BIAS=bias is not None,
        BLOCK_P=cfg["BLOCK_P"],
        BLOCK_C=cfg["BLOCK_C"],
        num_warps=cfg["num_warps"],
    )
    return y


def aot_configs() -> list[AotConfig]:
    """The launcher at ConvNeXt's 7x7 stage shapes in bf16, plus 3x3 fp32 and an odd 5x5 fp16."""
    cases = [
        # (dtype, channels, spatial size, kernel size, bias)
        (torch.bfloat16, 96, 56, 7, True),
        (torch.bfloat16, 384, 14, 7, True),
        (torch.bfloat16, 768, 7, 7, True),
        (torch.float32, 64, 32, 3, False),
        (torch.float16, 13, 9, 5, True),
    ]
    calls = []
    for dtype, channels, size, k, has_bias in cases:
        x = torch.empty(2, channels, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
        weight = torch.empty(channels, 1, k, k, dtype=dtype)
        bias = torch.empty(channels, dtype=dtype) if has_bias else None
        note = f"depthwise {k}x{k} {str(dtype).removeprefix('torch.')} C={channels} {size}x{size}"
        calls.append((note, functools.partial(depthwise_conv2d, x, weight, bias)))
    return configs_from_launches(calls)
