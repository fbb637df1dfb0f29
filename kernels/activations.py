"""Elementwise activations of transformer MLPs: GELU (erf or tanh, optionally bias-fused), SiLU, SwiGLU.

Legend: M = rows (every leading dimension flattened), N = output features per row,
d = half the input row of silu_and_mul (the gate and up projections side by side).

One kernel serves all three ops (`ACTIVATION` switch): they share the tiling, the row stride
and the store, and differ only in one or two lines of math. The launch grid is 2-D, (row
blocks, column blocks), so a row of any length is split over programs instead of being held
by one: a 14336-wide SwiGLU row is 14 programs of 1024 columns, and short rows (N < 1024)
pack several rows into one program so every program still moves ~1024 elements.
Inputs whose rows are not at one fixed stride with contiguous columns are copied once
(`as_rows`); slices such as x[:, :k] are read in place.
"""

from __future__ import annotations

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

# ACTIVATION values; plain ints so they can be constexprs.
GELU = 0
SILU = 1
SILU_AND_MUL = 2

# Elements per program: 1024 over 4 warps is 8 per thread, i.e. one 16-byte load per
# thread in bf16 and two in fp32, the usual sweet spot of a memory-bound elementwise kernel.
TILE = 1024
NUM_WARPS = 4

_APPROXIMATE = ("none", "tanh")


@triton.jit
def _activation_fwd_kernel(
    X,  # (M, N) input, or (M, 2*d) for SILU_AND_MUL with N = d; unit column stride
    B,  # (N,) bias added before GELU, same dtype as X; unused unless HAS_BIAS
    Y,  # (M, N) output, contiguous, X's dtype
    stride_x,  # elements between consecutive rows of X
    M,  # number of rows
    N,  # output columns (d for SILU_AND_MUL)
    ACTIVATION: tl.constexpr,  # GELU, SILU or SILU_AND_MUL
    APPROX_TANH: tl.constexpr,  # GELU only: tanh approximation instead of the erf form
    HAS_BIAS: tl.constexpr,  # GELU only: y = gelu(x + b)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # int64: row * stride passes 2^31 on e.g. 8192 x 2*14336 SwiGLU inputs across a batch.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]
    x_offs = rows[:, None] * stride_x + cols[None, :]  # (BLOCK_M, BLOCK_N)

    # -- load, fp32 from here on --
    x = tl.load(X + x_offs, mask=mask, other=0.0).to(tl.float32)

    if ACTIVATION == 0:  # GELU
        if HAS_BIAS:
            x += tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if APPROX_TANH:
            # 0.5 * x * (1 + tanh(u)) == x * sigmoid(2u) exactly; the sigmoid form has no
            # cancellation in 1 + tanh(u) for large negative u and needs no tl.tanh.
            u = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2/pi) * (x + 0.044715 x^3)
            y = x * tl.sigmoid(2.0 * u)
        else:
            y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))  # 1/sqrt(2)
    elif ACTIVATION == 1:  # SILU
        y = x * tl.sigmoid(x)
    else:  # SILU_AND_MUL: x holds the gate half, the up half sits d = N columns to the right
        up = tl.load(X + x_offs + N, mask=mask, other=0.0).to(tl.float32)
        y = x * tl.sigmoid(x) * up

    # -- store: the one cast to the storage dtype --
    y_offs = rows[:, None] * N + cols[None, :]
    tl.store(Y + y_offs, y.to(Y.dtype.element_ty), mask=mask)


def activation_launch_config(n_cols: int) -> dict:
    """Tile shape for rows of n_cols outputs; shared by the launchers and aot_configs.

    Depends on the row length only (a model constant), so decode steps of varying batch size
    reuse one compiled kernel.
    """
    block_n = min(next_power_of_2(n_cols), TILE)
    return {"BLOCK_M": TILE // block_n, "BLOCK_N": block_n, "num_warps": NUM_WARPS}


@on_input_device
def _launch(x, out_cols, activation, approx_tanh=False, bias=None):
    """Run the kernel over x viewed as rows; returns a contiguous tensor of x's leading shape + (out_cols,)."""
    in_cols = x.shape[-1]
    y = torch.empty((*x.shape[:-1], out_cols), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    x2 = as_rows(x, in_cols)
    n_rows = x2.shape[0]
    cfg = activation_launch_config(out_cols)
    num_warps = cfg.pop("num_warps")
    grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]), triton.cdiv(out_cols, cfg["BLOCK_N"]))
    _activation_fwd_kernel[grid](
        x2,
        bias if bias is not None else x2,
        y,
        x2.stride(0),
        n_rows,
        out_cols,
        ACTIVATION=activation,
        APPROX_TANH=approx_tanh,
        HAS_BIAS=bias is not None,
        num_warps=num_warps,
        **cfg,
    )
    return y


def _check_input(x: torch.Tensor) -> None:
    check_float("x", x)
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dimension, got a 0-d tensor")


def gelu(x: torch.Tensor, approximate: str = "none", bias: torch.Tensor | None = None) -> torch.Tensor:
    """GELU of x (erf form, or the tanh approximation with approximate="tanh"), computed in fp32.

    With `bias` of shape (x.shape[-1],), returns gelu(x + bias) in one pass (the bias add of a
    linear layer fused into its activation); the sum is not rounded to x's dtype in between.
    """
    if approximate not in _APPROXIMATE:
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")
    _check_input(x)
    check_same_device(x=x, bias=bias)
    check_same_dtype("x", x, bias=bias)
    check_vector("bias", bias, x.shape[-1])
    return _launch(x, x.shape[-1], GELU, approx_tanh=approximate == "tanh", bias=bias)


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU (swish) of x: x * sigmoid(x), computed in fp32."""
    _check_input(x)
    return _launch(x, x.shape[-1], SILU)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """SwiGLU gating: x (..., 2*d) -> silu(x[..., :d]) * x[..., d:], shape (..., d).

    The gate and up projections of a Llama MLP are computed as one matmul whose output holds
    both halves; this reads it once and writes half as many values.
    """
    _check_input(x)
    if x.shape[-1] % 2:
        raise ValueError(f"x: expected an even last dimension (gate and up halves), got {x.shape[-1]}")
    return _launch(x, x.shape[-1] // 2, SILU_AND_MUL)


def aot_configs() -> list[AotConfig]:
    """The launchers at BERT/GPT-2 MLP (3072), Llama-7B (11008), Llama-3-8B SwiGLU (14336), a short row."""
    rows = 8

    def x(dtype, n_cols):
        return torch.empty(rows, n_cols, dtype=dtype)

    def bias(dtype, n_cols):
        return torch.empty(n_cols, dtype=dtype)

    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    return configs_from_launches(
        [
            ("gelu bfloat16 N=3072", lambda: gelu(x(bf16, 3072))),
            ("gelu bias float32 N=3072", lambda: gelu(x(fp32, 3072), bias=bias(fp32, 3072))),
            ("gelu tanh bias float16 N=3072", lambda: gelu(x(fp16, 3072), "tanh", bias(fp16, 3072))),
            ("gelu tanh bfloat16 N=3072", lambda: gelu(x(bf16, 3072), "tanh")),
            ("silu bfloat16 N=11008", lambda: silu(x(bf16, 11008))),
            ("silu float32 N=11008", lambda: silu(x(fp32, 11008))),
            ("silu_and_mul bfloat16 N=14336", lambda: silu_and_mul(x(bf16, 2 * 14336))),
            ("silu_and_mul float32 N=200", lambda: silu_and_mul(x(fp32, 2 * 200))),
        ]
    )
