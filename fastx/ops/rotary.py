"""Rotary position embedding on (..., heads, head_dim) queries and keys, rotate-half layout."""

from __future__ import annotations

import torch

from fastx.kernels.rotary import apply_rotary
from fastx.ops._backend import use_triton


def _rotary_eager(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The kernel's math in torch ops: x (..., N, D), cos/sin (P, R/2), positions (...)."""
    half = cos.shape[1]
    flat = positions.reshape(-1)  # index_select: several times faster than advanced indexing here
    c = cos.index_select(0, flat).view(*positions.shape, 1, half).float()  # (..., 1, R/2), broadcast over heads
    s = sin.index_select(0, flat).view(*positions.shape, 1, half).float()
    x1 = x[..., :half].float()
    x2 = x[..., half : 2 * half].float()
    rotated = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
    return torch.cat([rotated, x[..., 2 * half :]], dim=-1)


def rotary_embedding(
    query: torch.Tensor,
    key: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate query (..., H, D) and key (..., K, D) by the angles of `positions` (...); out of place.

    cos, sin: (max_positions, R/2) with R <= D; dims R..D pass through unchanged (partial rotary).
    Equals transformers' apply_rotary_pos_emb with cos = cat(c, c), sin = cat(s, s) on dims :R.
    Both paths compute in fp32 and round once to query's dtype.
    """
    lead = tuple(query.shape[:-2])
    if query.dim() < 2:
        raise ValueError(f"query: expected shape (..., heads, head_dim), got {tuple(query.shape)}")
    if tuple(positions.shape) != lead:
        raise ValueError(f"positions: expected shape {lead} (query's leading dims), got {tuple(positions.shape)}")
    if key is not None and tuple(key.shape[:-2]) != lead:
        raise ValueError(f"key: expected leading dims {lead} (query's), got shape {tuple(key.shape)}")
    if not use_triton(query, key, cos, sin, positions):
        # The same argument checks as the kernel, so both paths accept and reject the same inputs.
        head_dim = query.shape[-1]
        if head_dim % 2:
            raise ValueError(f"q: expected an even head dim, got {head_dim}")
        if 2 * cos.shape[-1] > head_dim:
            raise ValueError(
                f"cos: expected at most {head_dim // 2} columns (head dim {head_dim} / 2), got {cos.shape[-1]}"
            )
        q_out = _rotary_eager(query, cos, sin, positions)
        return q_out, (_rotary_eager(key, cos, sin, positions) if key is not None else None)
    # (..., N, D) -> (T, N, D): a view for the usual (T, N, D) or (B, S, N, D) layouts.
    q3 = query.reshape(-1, *query.shape[-2:])
    k3 = key.reshape(-1, *key.shape[-2:]) if key is not None else None
    q_out, k_out = apply_rotary(q3, k3, cos, sin, positions.reshape(-1))
    return q_out.view(query.shape), (k_out.view(key.shape) if k_out is not None else None)
