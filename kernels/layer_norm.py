"""LayerNorm and RMSNorm over the last dimension, optionally fused with a residual add.

Legend: M = rows (every leading dimension flattened), N = normalised features per row.

One kernel serves both norms (`IS_RMS_NORM` switch): they differ only in whether the row mean
is subtracted. Rows that fit in one block (N <= MAX_FUSED_N) are read once and held in
registers; longer rows are streamed in BLOCK_N chunks over three passes (mean, variance,
normalise), which is the Triton tutorial's scheme and bounds register use at any N.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastx.kernels._common import (
    as_rows,
    check_float,
    check_same_device,
    check_same_dtype,
    check_vector,
    next_power_of_2,
    on_input_device,
)
from fastx.kernels.aot import AotConfig, configs_from_launches

# Rows up to this length are normalised from registers in one pass; 16384 fp32 values over
# 16 warps is 32 per thread, which compiles without spills for sm_80 and sm_90 (see report).
MAX_FUSED_N = 16384
# Chunk length of the streaming path for longer rows.
STREAM_BLOCK_N = 4096


@triton.jit
def _load_row_chunk(
    X,  # pointer to this row of the input
    RESIDUAL,  # pointer to this row of the residual (unused unless HAS_RESIDUAL)
    RESIDUAL_OUT,  # pointer to this row of X + RESIDUAL (unused unless HAS_RESIDUAL)
    cols,  # (BLOCK_N,) column indices
    mask,  # (BLOCK_N,) cols < N
    HAS_RESIDUAL: tl.constexpr,
    STORE_RESIDUAL: tl.constexpr,  # write X + RESIDUAL back (first visit of this chunk only)
):
    x = tl.load(X + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(RESIDUAL + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to the storage dtype before normalising, so fused == add-then-norm.
        summed = x.to(RESIDUAL_OUT.dtype.element_ty)
        if STORE_RESIDUAL:
            tl.store(RESIDUAL_OUT + cols, summed, mask=mask)
        x = summed.to(tl.float32)
    return x


@triton.jit
def _norm_fwd_kernel(
    X,  # (M, N) input, unit column stride
    RESIDUAL,  # (M, N) residual, same dtype as X; unused unless HAS_RESIDUAL
    W,  # (N,) weight; unused unless HAS_WEIGHT
    B,  # (N,) bias; unused unless HAS_BIAS
    Y,  # (M, N) output, contiguous
    RESIDUAL_OUT,  # (M, N) X + RESIDUAL, contiguous; unused unless HAS_RESIDUAL
    stride_x,  # elements between consecutive rows of X
    stride_res,  # elements between consecutive rows of RESIDUAL
    N,  # row length
    eps,  # added to the variance (or mean square) before the square root
    IS_RMS_NORM: tl.constexpr,  # True: x * rsqrt(mean(x^2) + eps); False: LayerNorm
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ONE_PASS: tl.constexpr,  # the whole row fits in one block (BLOCK_N >= N)
    BLOCK_N: tl.constexpr,
):
    # int64: row * stride can pass 2^31 on large activations.
    row = tl.program_id(0).to(tl.int64)
    X += row * stride_x
    Y += row * N
    if HAS_RESIDUAL:
        RESIDUAL += row * stride_res
        RESIDUAL_OUT += row * N
    cols = tl.arange(0, BLOCK_N)

    if ONE_PASS:
        mask = cols < N
        x = _load_row_chunk(X, RESIDUAL, RESIDUAL_OUT, cols, mask, HAS_RESIDUAL, True)
        # -- statistics in fp32 --
        if IS_RMS_NORM:
            rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
            y = x * rstd
        else:
            mean = tl.sum(x, axis=0) / N
            centred = tl.where(mask, x - mean, 0.0)  # masked lanes must not enter the variance
            rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / N + eps)
            y = centred * rstd
        # -- affine and store --
        if HAS_WEIGHT:
            y *= tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        # -- pass 1: sum (LayerNorm) or sum of squares (RMSNorm); writes X + RESIDUAL --
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for start in range(0, N, BLOCK_N):
            mask = start + cols < N
            x = _load_row_chunk(X + start, RESIDUAL + start, RESIDUAL_OUT + start, cols, mask, HAS_RESIDUAL, True)
            if IS_RMS_NORM:
                acc += x * x
            else:
                acc += x
        # Later passes re-read the summed row that this program wrote.
        SOURCE = RESIDUAL_OUT if HAS_RESIDUAL else X
        tl.debug_barrier()
        mean = 0.0
        if IS_RMS_NORM:
            rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        else:
            mean = tl.sum(acc, axis=0) / N
            # -- pass 2: variance around the mean (two-pass, not E[x^2] - E[x]^2) --
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                mask = start + cols < N
                x = tl.load(SOURCE + start + cols, mask=mask, other=0.0).to(tl.float32)
                centred = tl.where(mask, x - mean, 0.0)
                acc += centred * centred
            rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / N + eps)
        # -- pass 3: normalise, affine, store --
        for start in range(0, N, BLOCK_N):
            mask = start + cols < N
            x = tl.load(SOURCE + start + cols, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd
            if HAS_WEIGHT:
                y *= tl.load(W + start + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_BIAS:
                y += tl.load(B + start + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + start + cols, y.to(Y.dtype.element_ty), mask=mask)


def norm_launch_config(n_cols: int) -> dict:
    """Block size, pass count and warps for a row of n_cols; shared by the launcher and aot_configs."""
    if n_cols <= MAX_FUSED_N:
        block_n = next_power_of_2(n_cols)
        one_pass = True
    else:
        block_n = STREAM_BLOCK_N
        one_pass = False
    # ~8 fp32 values per thread at 256-wide blocks and up; 16 warps cap (512 threads).
    num_warps = min(max(block_n // 256, 1), 16)
    return {"BLOCK_N": block_n, "ONE_PASS": one_pass, "num_warps": num_warps}


@on_input_device
def _norm(x, weight, bias, eps, residual, is_rms_norm):
    check_float("input", x)
    check_same_device(input=x, weight=weight, bias=bias, residual=residual)
    check_same_dtype("input", x, weight=weight, bias=bias, residual=residual)
    if x.dim() == 0:
        raise ValueError("input: expected at least 1 dimension, got a 0-d tensor")
    n_cols = x.shape[-1]
    check_vector("weight", weight, n_cols)
    check_vector("bias", bias, n_cols)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual: expected shape {tuple(x.shape)} (the input's), got {tuple(residual.shape)}")

    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    residual_out = torch.empty_like(y) if residual is not None else None
    if x.numel() == 0:
        return y if residual is None else (y, residual_out)

    x2 = as_rows(x, n_cols)
    res2 = as_rows(residual, n_cols) if residual is not None else x2
    cfg = norm_launch_config(n_cols)
    num_warps = cfg.pop("num_warps")
    _norm_fwd_kernel[(x2.shape[0],)](
        x2,
        res2,
        weight if weight is not None else x2,
        bias if bias is not None else x2,
        y,
        residual_out if residual_out is not None else y,
        x2.stride(0),
        res2.stride(0),
        n_cols,
        float(eps),
        IS_RMS_NORM=is_rms_norm,
        HAS_RESIDUAL=residual is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        num_warps=num_warps,
        **cfg,
    )
    return y if residual is None else (y, residual_out)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
):
    """LayerNorm over the last dimension of x, with fp32 statistics.

    With `residual`, returns (layer_norm(x + residual), x + residual) from one pass over memory:
    the pre-norm residual stream of a transformer block. Inputs whose rows are not at one fixed
    stride with contiguous columns are copied once.
    """
    return _norm(x, weight, bias, eps, residual, is_rms_norm=False)


def aot_configs() -> list[AotConfig]:
    return norm_aot_configs(is_rms_norm=False)


def norm_aot_configs(is_rms_norm: bool) -> list[AotConfig]:
    """The launcher at BERT (384, 768), Llama (576, 4096), the fused limit and streaming widths."""
    cases = [
        (torch.bfloat16, 384 if not is_rms_norm else 576, False),
        (torch.bfloat16, 4096, True),
        (torch.float16, 768, True),
        (torch.float32, MAX_FUSED_N, False),
        (torch.bfloat16, 65536, True),
        (torch.bfloat16, 4100, False),  # a width no real checkpoint has: what unaligned rows compile to
    ]
    calls = []
    for dtype, n_cols, has_residual in cases:
        x = torch.empty(8, n_cols, dtype=dtype)
        weight, bias = torch.empty(n_cols, dtype=dtype), None if is_rms_norm else torch.empty(n_cols, dtype=dtype)
        residual = torch.empty_like(x) if has_residual else None
        name = f"{'rms' if is_rms_norm else 'layer'} norm {str(dtype).removeprefix('torch.')} N={n_cols}"
        calls.append((name, functools.partial(_norm, x, weight, bias, 1e-5, residual, is_rms_norm=is_rms_norm)))
    return configs_from_launches(calls)
