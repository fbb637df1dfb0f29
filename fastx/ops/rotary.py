"""Rotary position embedding on (..., heads, head_dim) queries and keys, rotate-half layout."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastx.kernels.rotary import apply_rotary, check_rotary_dims
from fastx.ops._backend import use_triton


class RotaryAngles(NamedTuple):
    """cos, sin and positions as rotary_embedding takes them (see rotary_angles)."""

    cos: torch.Tensor
    sin: torch.Tensor
    positions: torch.Tensor | None


def rotary_angles(cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> RotaryAngles:
    """Prepare the angles of `positions` once for every layer of a step.

    The Triton kernel reads the cos/sin rows of each token itself, so the tables pass through.
    The eager path gathers the rows here, once (cos/sin become (..., R/2) and positions None),
    instead of twice in each of the model's layers.
    """
    if use_triton(cos, sin, positions):
        return RotaryAngles(cos, sin, positions)
    flat = positions.reshape(-1)  # index_select: several times faster than advanced indexing here
    rows = (*positions.shape, cos.shape[-1])
    return RotaryAngles(cos.index_select(0, flat).view(rows), sin.index_select(0, flat).view(rows), None)


def _rotary_eager(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The kernel's math in torch ops: x (..., N, D), c/s (..., 1, R/2) the rows of x's tokens."""
    half = c.shape[-1]
    c, s = c.float(), s.float()
    x1 = x[..., :half].float()
    x2 = x[..., half : 2 * half].float()
    rotated = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
    if 2 * half == x.shape[-1]:
        return rotated
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)


def rotary_embedding(
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate query (..., H, D) and key (..., K, D) by the angles of `positions` (...); out of place.

    cos, sin: (max_positions, R/2) with R <= D; dims R..D pass through unchanged (partial rotary).
    positions=None: cos and sin are already the rows of query's tokens, shape (..., R/2) (what
    rotary_angles returns on the eager path).
    Equals transformers' apply_rotary_pos_emb with cos = cat(c, c), sin = cat(s, s) on dims :R.
    Both paths compute in fp32 and round once to query's dtype.
    """
    lead = tuple(query.shape[:-2])
    if query.dim() < 2:
        raise ValueError(f"query: expected shape (..., heads, head_dim), got {tuple(query.shape)}")
    if positions is not None and tuple(positions.shape) != lead:
        raise ValueError(f"positions: expected shape {lead} (query's leading dims), got {tuple(positions.shape)}")
    if positions is None and tuple(cos.shape[:-1]) != lead:
        raise ValueError(
            f"cos: with positions=None, expected one row per token, shape {lead} + (rotary_dim/2,), "
            f"got {tuple(cos.shape)}"
        )
    if key is not None and tuple(key.shape[:-2]) != lead:
        raise ValueError(f"key: expected leading dims {lead} (query's), got shape {tuple(key.shape)}")
    if not use_triton(query, key, cos, sin, positions):
        check_rotary_dims(query.shape[-1], cos.shape[-1])  # the kernel's own check
        if positions is not None:
            cos, sin, _ = rotary_angles(cos, sin, positions)
        c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (..., 1, R/2): broadcast over heads
        return _rotary_eager(query, c, s), (_rotary_eager(key, c, s) if key is not None else None)
    # (..., N, D) -> (T, N, D): a view for the usual (T, N, D) or (B, S, N, D) layouts.
    q3 = query.reshape(-1, *query.shape[-2:])
    k3 = key.reshape(-1, *key.shape[-2:]) if key is not None else None
    if positions is None:  # rows already gathered: token t reads row t
        cos, sin = cos.reshape(-1, cos.shape[-1]), sin.reshape(-1, sin.shape[-1])
        positions = torch.arange(q3.shape[0], device=q3.device)
    q_out, k_out = apply_rotary(q3, k3, cos, sin, positions.reshape(-1))
    return q_out.view(query.shape), (k_out.view(key.shape) if k_out is not None else None)
