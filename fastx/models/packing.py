"""Padded (B, L) batches <-> packed token streams, and attention over packed sequences.

Legend: B = batch, L = padded length, T = real tokens in the batch, H = heads, D = head dim.
Encoders compute on real tokens only: a padded batch is packed into T rows with
`cu_seqlens` marking where each sequence starts (flash-attn's varlen layout), run through
the layers, and scattered back to (B, L, ...) with zeros at padded positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import fastx.ops as ops


@dataclass(slots=True)
class PackedBatch:
    indices: torch.Tensor  # (T,) int64: flat positions of real tokens in the (B * L) layout
    cu_seqlens: torch.Tensor  # (B + 1,) int32: sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1]
    max_seqlen: int
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor | None, batch: int, length: int, device) -> PackedBatch:
        """Pack by a (B, L) 0/1 mask (any padding side); None means no padding."""
        if attention_mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=device)
        else:
            if attention_mask.shape != (batch, length):
                raise ValueError(f"attention_mask: expected shape {(batch, length)}, got {tuple(attention_mask.shape)}")
            mask = attention_mask.to(device=device).bool()
        lengths = mask.sum(dim=1)
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=device)
        cu_seqlens[1:] = torch.cumsum(lengths, 0).to(torch.int32)
        indices = mask.reshape(-1).nonzero().squeeze(1)
        return cls(indices, cu_seqlens, int(lengths.max()) if batch else 0, batch, length)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (T, ...)."""
        return x.reshape(self.batch * self.length, *x.shape[2:])[self.indices]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (B, L, ...), zeros at padded positions."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:])
        out[self.indices] = x
        return out.view(self.batch, self.length, *x.shape[1:])


def packed_attention(
    q: torch.Tensor,  # (T, H, D)
    k: torch.Tensor,  # (T, K, D)
    v: torch.Tensor,  # (T, K, D)
    batch: PackedBatch,
    causal: bool,
    scale: float | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention within each packed sequence; returns (out (T, H, D), probs (B, H, L, L) or None).

    The fast path is fastx.ops.varlen_attention (the Triton kernel on a GPU). Attention
    probabilities are never formed by the kernel, so `output_attentions=True` takes an eager
    path that materialises them per sequence, as transformers' eager attention does.
    """
    if not output_attentions:
        out = ops.varlen_attention(
            q, k, v, batch.cu_seqlens, batch.cu_seqlens, batch.max_seqlen, batch.max_seqlen, causal=causal, scale=scale
        )
        return out, None
    heads, kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    out = torch.empty_like(q)
    probs = q.new_zeros(batch.batch, heads, batch.length, batch.length)
    bounds = batch.cu_seqlens.tolist()
    rows = batch.indices.view(-1)
    for b in range(batch.batch):
        s, e = bounds[b], bounds[b + 1]
        if s == e:
            continue
        qb = q[s:e].transpose(0, 1).float()  # (H, n, D)
        kb = k[s:e].transpose(0, 1).float().repeat_interleave(heads // kv_heads, 0)
        vb = v[s:e].transpose(0, 1).float().repeat_interleave(heads // kv_heads, 0)
        scores = (qb @ kb.transpose(1, 2)) * scale  # (H, n, n)
        if causal:
            n = e - s
            scores.masked_fill_(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        p = scores.softmax(-1)
        out[s:e] = (p @ vb).transpose(0, 1).to(q.dtype)
        cols = rows[s:e] - b * batch.length  # positions of this sequence's tokens in the padded layout
        probs[b][:, cols[:, None], cols[None, :]] = p.to(q.dtype)
    return out, probs
