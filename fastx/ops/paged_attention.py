"""Paged KV cache ops: write K/V into cache slots, decode attention over a block table.

Legend: S = sequences, T = tokens, H = query heads, K = kv heads, D = head dim, N = cache
blocks, B = tokens per block. Triton kernels (fastx.kernels.paged_attention) on CUDA, eager
PyTorch otherwise; both validate with the kernel module's checks, so errors are identical.
"""

from __future__ import annotations

import math

import torch

from fastx.kernels import paged_attention as _kernels
from fastx.ops._backend import use_triton


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    """Write key/value (T, K, D) into k_cache/v_cache (N, B, K, D) at slot_mapping (T,); slots < 0 are skipped."""
    if use_triton(key, value, k_cache, v_cache, slot_mapping):
        return _kernels.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    _kernels.check_write_args(key, value, k_cache, v_cache, slot_mapping)
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    # Advanced-index assignment writes in place whatever the caches' strides are.
    k_cache[blocks, offsets] = key[valid]
    v_cache[blocks, offsets] = value[valid]


def paged_decode_attention(
    q, k_cache, v_cache, block_tables, context_lens, scale=None, max_context_len=None, partition_size=None
) -> torch.Tensor:
    """Decode attention of q (S, H, D) over each sequence's paged context; returns (S, H, D) in q's dtype.

    See fastx.kernels.paged_attention.paged_decode_attention for the arguments; the eager path
    ignores max_context_len and partition_size (they only shape the kernel's grid).
    """
    if use_triton(q, k_cache, v_cache, block_tables, context_lens):
        return _kernels.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, scale, max_context_len, partition_size
        )
    _kernels.check_decode_args(q, k_cache, v_cache, block_tables, context_lens, max_context_len, partition_size)
    n_seqs, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)  # context_len 0 -> zeros
    for i, n in enumerate(context_lens.tolist()):
        if n == 0:
            continue
        table = block_tables[i, : -(-n // block_size)].long()
        k = k_cache[table].reshape(-1, kv_heads, head_dim)[:n].float()  # (n, K, D)
        v = v_cache[table].reshape(-1, kv_heads, head_dim)[:n].float()
        qi = q[i].float().view(kv_heads, n_heads // kv_heads, head_dim)  # (K, G, D)
        logits = torch.einsum("kgd,nkd->kgn", qi, k) * scale  # fp32 softmax, as in the kernel
        o = torch.einsum("kgn,nkd->kgd", torch.softmax(logits, dim=-1), v)
        out[i] = o.reshape(n_heads, head_dim).to(q.dtype)
    return out
