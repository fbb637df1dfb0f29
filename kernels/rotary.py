"""Rotary position embedding (RoPE), rotate-half layout (Llama, GPT-NeoX), out of place.

Legend: T = tokens, H = query heads, K = key heads, D = head dim, R = rotary dims (even, <= D),
P = rows of the cos/sin cache (max positions).

For i < R/2 and p = positions[t]:
    out[i]       = x[i]       * cos[p, i] - x[i + R/2] * sin[p, i]
    out[i + R/2] = x[i + R/2] * cos[p, i] + x[i]       * sin[p, i]
and out[R:D] = x[R:D] (partial rotary, as GPT-NeoX / Phi use). This is transformers'
`apply_rotary_pos_emb` with cos = cat(c, c), sin = cat(s, s) on the first R dims.

One launch rotates q and k: the grid is (T, query head blocks + key head blocks) and each
program rotates BLOCK_HEADS heads of one token, reading that token's cos/sin row once.
q and k may be strided views (e.g. slices of a fused qkv projection): any token and head
stride is read in place; only a non-unit stride along D makes the launcher copy once.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastx.kernels import _common
from fastx.kernels._common import (
    check_float,
    check_same_device,
    check_same_dtype,
    next_power_of_2,
    on_input_device,
)
from fastx.kernels.aot import AotConfig, configs_from_launches

# Values of one (BLOCK_HEADS, HALF_BLOCK) tile, i.e. the x1 and x2 halves of some heads:
# 1024 per half over 4 warps is 8 per thread per half, one 16-byte bf16 load each.
TILE = 1024
NUM_WARPS = 4  # at most; smaller tiles get fewer warps to keep 8 values per thread


@triton.jit
def _rotate_heads(
    X,  # (T, NH, D) input, strides (stride_xt, stride_xh, 1)
    OUT,  # (T, NH, D) output, contiguous
    cos,  # (1, HALF_BLOCK) fp32 cos[p, :R/2] of this token, 0 past R/2
    sin,  # (1, HALF_BLOCK) fp32 sin[p, :R/2] of this token
    token,  # int64 token index
    head_block,  # which block of BLOCK_HEADS heads
    stride_xt,  # elements between tokens of X
    stride_xh,  # elements between heads of X
    NH,  # number of heads of X (H or K)
    D,  # head dim
    HALF,  # R / 2
    BLOCK_HEADS: tl.constexpr,
    HALF_BLOCK: tl.constexpr,  # next power of 2 >= R/2
    HAS_PASS: tl.constexpr,  # D > R: dims R..D are copied unchanged
    PASS_BLOCK: tl.constexpr,  # next power of 2 >= D - R
):
    heads = head_block * BLOCK_HEADS + tl.arange(0, BLOCK_HEADS)
    head_mask = (heads < NH)[:, None]  # (BLOCK_HEADS, 1)
    x_row = X + token * stride_xt + heads[:, None] * stride_xh  # (BLOCK_HEADS, 1) pointers
    out_row = OUT + token * NH * D + heads[:, None] * D
    i = tl.arange(0, HALF_BLOCK)[None, :]  # (1, HALF_BLOCK)
    mask = head_mask & (i < HALF)

    # -- rotate the first R dims --
    x1 = tl.load(x_row + i, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + HALF + i, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    tl.store(out_row + i, y1.to(OUT.dtype.element_ty), mask=mask)
    tl.store(out_row + HALF + i, y2.to(OUT.dtype.element_ty), mask=mask)

    # -- pass the remaining D - R dims through (partial rotary) --
    if HAS_PASS:
        j = 2 * HALF + tl.arange(0, PASS_BLOCK)[None, :]
        pass_mask = head_mask & (j < D)
        x = tl.load(x_row + j, mask=pass_mask, other=0.0)
        tl.store(out_row + j, x, mask=pass_mask)


@triton.jit
def _rotary_fwd_kernel(
    Q,  # (T, H, D) queries, strides (stride_qt, stride_qh, 1)
    K,  # (T, K, D) keys, same dtype as Q, strides (stride_kt, stride_kh, 1); unused unless HAS_K
    COS,  # (P, R/2) cos cache, unit column stride, any float dtype
    SIN,  # (P, R/2) sin cache, same dtype as COS
    POS,  # (T,) int32 or int64 position of each token
    Q_OUT,  # (T, H, D) rotated queries, contiguous
    K_OUT,  # (T, K, D) rotated keys, contiguous; unused unless HAS_K
    stride_qt,  # elements between tokens of Q
    stride_qh,  # elements between heads of Q
    stride_kt,  # elements between tokens of K
    stride_kh,  # elements between heads of K
    stride_cos,  # elements between rows of COS
    stride_sin,  # elements between rows of SIN
    H,  # query heads
    NK,  # key heads
    D,  # head dim
    HALF,  # R / 2
    HAS_K: tl.constexpr,
    BLOCK_HEADS: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
    HAS_PASS: tl.constexpr,
    PASS_BLOCK: tl.constexpr,
):
    # int64: token * stride passes 2^31 at e.g. 128k tokens x 32 heads x 128 dims x 3 (fused qkv).
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    n_q_blocks = tl.cdiv(H, BLOCK_HEADS)

    # -- this token's cos/sin row, shared by all its heads, in fp32 --
    pos = tl.load(POS + token).to(tl.int64)
    i = tl.arange(0, HALF_BLOCK)[None, :]
    cos = tl.load(COS + pos * stride_cos + i, mask=i < HALF, other=0.0).to(tl.float32)
    sin = tl.load(SIN + pos * stride_sin + i, mask=i < HALF, other=0.0).to(tl.float32)

    if head_block < n_q_blocks:
        _rotate_heads(
            Q,
            Q_OUT,
            cos,
            sin,
            token,
            head_block,
            stride_qt,
            stride_qh,
            H,
            D,
            HALF,
            BLOCK_HEADS,
            HALF_BLOCK,
            HAS_PASS,
            PASS_BLOCK,
        )
    elif HAS_K:
        _rotate_heads(
            K,
            K_OUT,
            cos,
            sin,
            token,
            head_block - n_q_blocks,
            stride_kt,
            stride_kh,
            NK,
            D,
            HALF,
            BLOCK_HEADS,
            HALF_BLOCK,
            HAS_PASS,
            PASS_BLOCK,
        )


def rotary_launch_config(n_heads: int, head_dim: int, rotary_dim: int) -> dict:
    """Tile shape for the largest head count of q and k; shared by the launcher and aot_configs.

    Depends on model constants only, so every batch size reuses one compiled kernel.
    """
    half_block = next_power_of_2(rotary_dim // 2)
    block_heads = min(next_power_of_2(max(n_heads, 1)), max(TILE // half_block, 1))
    has_pass = head_dim > rotary_dim
    return {
        "BLOCK_HEADS": block_heads,
        "HALF_BLOCK": half_block,
        "HAS_PASS": has_pass,
        "PASS_BLOCK": next_power_of_2(head_dim - rotary_dim) if has_pass else 1,
        # 8 elements (16 bytes of a 16-bit dtype) per thread and tile: one 128-bit load each.
        # A fixed 4 warps split SmolLM2's 16 x 32 tile into 64-bit loads.
        "num_warps": max(1, min(NUM_WARPS, block_heads * half_block // (32 * 8))),
    }


def _check_heads(name: str, t: torch.Tensor, n_tokens: int | None, head_dim: int | None) -> None:
    check_float(name, t)
    if t.dim() != 3:
        raise ValueError(f"{name}: expected 3 dimensions (tokens, heads, head_dim), got shape {tuple(t.shape)}")
    if n_tokens is not None and t.shape[0] != n_tokens:
        raise ValueError(f"{name}: expected {n_tokens} tokens (the query's), got shape {tuple(t.shape)}")
    if head_dim is not None and t.shape[2] != head_dim:
        raise ValueError(f"{name}: expected head dim {head_dim} (the query's), got shape {tuple(t.shape)}")


def _check_positions(positions: torch.Tensor, n_tokens: int, n_positions: int) -> None:
    if not isinstance(positions, torch.Tensor) or positions.dtype not in (torch.int32, torch.int64):
        got = positions.dtype if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"positions: expected an int32 or int64 tensor, got {got}")
    if positions.shape != (n_tokens,):
        raise ValueError(f"positions: expected shape ({n_tokens},), got {tuple(positions.shape)}")
    # Reading the range back costs a device sync: free on the CPU, opt-in on a GPU.
    if n_tokens and _common.checks_values(positions):
        low, high = positions.min().item(), positions.max().item()
        if low < 0 or high >= n_positions:
            raise ValueError(
                f"positions: expected values in [0, {n_positions}) (rows of cos), got min {low}, max {high}"
            )


def check_rotary_dims(head_dim: int, half_rotary_dim: int) -> None:
    """An even head dim, and at most head_dim / 2 angle columns (dims past the rotary ones pass through).

    fastx.ops' eager path runs this too, so both paths accept and reject the same inputs.
    """
    if head_dim % 2:
        raise ValueError(f"q: expected an even head dim, got {head_dim}")
    if 2 * half_rotary_dim > head_dim:
        raise ValueError(
            f"cos: expected at most {head_dim // 2} columns (head dim {head_dim} / 2), got {half_rotary_dim}"
        )


@on_input_device
def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate q (T, H, D) and k (T, K, D) by the angles of `positions`; returns new tensors.

    cos, sin: (P, R/2) caches (fp32 or q's dtype), R <= D. Dims R..D pass through unchanged.
    The math runs in fp32 and each output is rounded once. Positions outside [0, P) are
    rejected for CPU tensors; on a GPU that check needs a sync and runs only with FASTX_DEBUG=1
    (without it an out-of-range position reads outside the cache).
    """
    _check_heads("q", q, None, None)
    n_tokens, n_heads, head_dim = q.shape
    if k is not None:
        _check_heads("k", k, n_tokens, head_dim)
        check_same_dtype("q", q, k=k)
    check_float("cos", cos)
    check_float("sin", sin)
    check_same_dtype("cos", cos, sin=sin)
    check_same_device(q=q, k=k, cos=cos, sin=sin, positions=positions)
    if cos.dim() != 2:
        raise ValueError(f"cos: expected 2 dimensions (max_positions, rotary_dim/2), got shape {tuple(cos.shape)}")
    if sin.shape != cos.shape:
        raise ValueError(f"sin: expected shape {tuple(cos.shape)} (the shape of cos), got {tuple(sin.shape)}")
    check_rotary_dims(head_dim, cos.shape[1])
    rotary_dim = 2 * cos.shape[1]
    _check_positions(positions, n_tokens, cos.shape[0])

    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device) if k is not None else None
    n_key_heads = k.shape[1] if k is not None else 0
    if n_tokens == 0 or (n_heads == 0 and n_key_heads == 0) or head_dim == 0:
        return q_out, k_out

    # Only a non-unit stride along D is copied; token and head strides are read in place.
    q = q if q.stride(2) == 1 else q.contiguous()
    k = k if k is None or k.stride(2) == 1 else k.contiguous()
    cos = cos if cos.stride(1) == 1 else cos.contiguous()
    sin = sin if sin.stride(1) == 1 else sin.contiguous()
    kk = k if k is not None else q

    cfg = rotary_launch_config(max(n_heads, n_key_heads), head_dim, rotary_dim)
    num_warps = cfg.pop("num_warps")
    blocks = triton.cdiv(n_heads, cfg["BLOCK_HEADS"]) + triton.cdiv(n_key_heads, cfg["BLOCK_HEADS"])
    _rotary_fwd_kernel[(n_tokens, blocks)](
        q,
        kk,
        cos,
        sin,
        positions,
        q_out,
        k_out if k_out is not None else q_out,
        q.stride(0),
        q.stride(1),
        kk.stride(0),
        kk.stride(1),
        cos.stride(0),
        sin.stride(0),
        n_heads,
        n_key_heads,
        head_dim,
        rotary_dim // 2,
        HAS_K=k is not None,
        num_warps=num_warps,
        **cfg,
    )
    return q_out, k_out


def aot_configs() -> list[AotConfig]:
    """The launcher for Llama-3-8B (32/8 heads, D=128), SmolLM2-135M (9/3, D=64), Phi-2 partial
    rotary (32 of 80), and q only; q and k as the models pass them, slices of the fused qkv rows."""
    cases = [
        # (q dtype, cos dtype, positions dtype, H, K, D, R, has_k)
        (torch.bfloat16, torch.float32, torch.int64, 32, 8, 128, 128, True),
        (torch.bfloat16, torch.bfloat16, torch.int32, 9, 3, 64, 64, True),
        (torch.float16, torch.float32, torch.int64, 32, 32, 80, 32, True),
        (torch.float32, torch.float32, torch.int64, 32, 8, 128, 128, False),
    ]
    calls = []
    for q_dtype, cos_dtype, pos_dtype, n_heads, n_key_heads, head_dim, rotary_dim, has_k in cases:
        tokens = 16
        qkv = torch.empty(tokens, n_heads + 2 * n_key_heads, head_dim, dtype=q_dtype)
        q, k = qkv[:, :n_heads], (qkv[:, n_heads : n_heads + n_key_heads] if has_k else None)
        cos = torch.empty(4096, rotary_dim // 2, dtype=cos_dtype)
        positions = torch.zeros(tokens, dtype=pos_dtype)
        note = (
            f"q {str(q_dtype).removeprefix('torch.')} cos {str(cos_dtype).removeprefix('torch.')} "
            f"H={n_heads} K={n_key_heads if has_k else 0} D={head_dim} R={rotary_dim}"
        )
        calls.append((note, functools.partial(apply_rotary, q, k, cos, cos.clone(), positions)))
    return configs_from_launches(calls)
