"""Paged KV cache ops: write K/V into cache slots, decode attention over a block table.

Legend: S = sequences, T = tokens, H = query heads, K = kv heads, D = head dim, N = cache
blocks, B = tokens per block. Triton kernels (fastx.kernels.paged_attention) on CUDA, eager
PyTorch otherwise; both validate with the kernel module's checks, so errors are identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastx.kernels import paged_attention as _kernels
from fastx.ops._backend import use_triton

_COMPUTE = torch.float32  # fp32 softmax and accumulation, as in the kernel


def write_kv_cache(key, value, k_cache, v_cache, slot_mapping, *, validate: bool = True) -> None:
    """Write key/value (T, K, D) into k_cache/v_cache (N, B, K, D) at slot_mapping (T,); slots < 0 are skipped.

    validate=False skips the eager path's argument and value checks and promises that no slot is
    negative: for a caller (the engine's attention layer) whose per-step metadata is built by
    the block manager and shared by every layer; on the CPU those checks cost more than the
    write itself at decode sizes.
    """
    if use_triton(key, value, k_cache, v_cache, slot_mapping):
        return _kernels.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
    if validate:
        _kernels.check_write_args(key, value, k_cache, v_cache, slot_mapping)
    slots = slot_mapping.long()
    if validate and bool((slots < 0).any()):  # padding rows: skip them
        keep = slots >= 0
        slots, key, value = slots[keep], key[keep], value[keep]
    if k_cache.is_contiguous() and v_cache.is_contiguous():
        # index_copy_ on the (slots, K, D) view: ~2x faster than advanced-index assignment on the CPU
        k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, key.to(k_cache.dtype))
        v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, value.to(v_cache.dtype))
        return
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    # Advanced-index assignment writes in place whatever the caches' strides are.
    k_cache[blocks, offsets] = key
    v_cache[blocks, offsets] = value


def paged_decode_attention(
    q,
    k_cache,
    v_cache,
    block_tables,
    context_lens,
    scale=None,
    max_context_len=None,
    num_splits=None,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Decode attention of q (S, H, D) over each sequence's paged context; returns (S, H, D) in q's dtype.

    See fastx.kernels.paged_attention.paged_decode_attention for the arguments; the eager path
    ignores num_splits (it only shapes the kernel's grid). validate=False: as in write_kv_cache.
    """
    if use_triton(q, k_cache, v_cache, block_tables, context_lens):
        return _kernels.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, scale, max_context_len, num_splits
        )
    if validate:
        _kernels.check_decode_args(q, k_cache, v_cache, block_tables, context_lens, max_context_len, num_splits)
    n_seqs, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if n_seqs == 0:
        return torch.zeros_like(q)
    # One batched gather of every sequence's blocks, then torch's fused CPU attention (SDPA):
    # per-sequence loops, advanced indexing and hand-written matmul/softmax chains each cost
    # more (SmolLM2 decode, 2-core CPU: 100 vs 170 us at batch 1, 0.8 vs 2.5 ms at batch 16).
    # Contexts are cut at the longest and shorter ones masked; a single sequence needs no mask.
    # At decode sizes each torch call costs about as much as its work, so calls that would do
    # nothing (int64 or fp32 conversions of what already is) are skipped.
    if n_seqs == 1:  # cut at its own length (max_context_len is only a bound): no padding to mask
        longest = int(context_lens[0])
    elif max_context_len is not None and not validate:  # a bound the caller vouches for; the rest is masked
        longest = max_context_len
    else:
        longest = int(context_lens.max())
    if longest == 0:
        return torch.zeros_like(q)
    width = -(-longest // block_size)
    tables = block_tables[:, :width].reshape(-1)  # (S * W,); index_select takes int32 or int64
    k = _gather_head_major(k_cache, tables, n_seqs, longest)  # (S, K, L, D)
    v = _gather_head_major(v_cache, tables, n_seqs, longest)
    mask = None
    if n_seqs > 1:  # a single sequence is cut at its own length: nothing to mask
        lens = context_lens.to(torch.long)
        mask = (torch.arange(longest, device=q.device)[None, :] < lens[:, None])[:, None, None, :]  # (S, 1, 1, L)
    queries = _as_compute(q.view(n_seqs, n_heads, 1, head_dim))
    out = F.scaled_dot_product_attention(queries, k, v, attn_mask=mask, scale=scale, enable_gqa=kv_heads != n_heads)
    if mask is not None:
        out = out.nan_to_num_(0.0)  # a context of 0 tokens -> zeros, never NaN
    out = out.view(n_seqs, n_heads, head_dim)
    return out if out.dtype == q.dtype else out.to(q.dtype)


def _as_compute(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == _COMPUTE else x.to(_COMPUTE)


def _gather_head_major(cache: torch.Tensor, tables: torch.Tensor, n_seqs: int, length: int) -> torch.Tensor:
    """The first `length` tokens of each sequence's blocks as an (S, K, L, D) fp32 view.

    index_select copies whole blocks (N, B, K, D) -> (S, W * B, K, D); the heads-first order is
    a strided view that SDPA reads in place.
    """
    _, _, kv_heads, head_dim = cache.shape
    gathered = cache.index_select(0, tables).view(n_seqs, -1, kv_heads, head_dim)[:, :length]
    return _as_compute(gathered.transpose(1, 2))


def decode_num_splits(n_seqs: int, n_heads: int, k_cache: torch.Tensor, max_context_len: int | None = None) -> int:
    """The split count paged_decode_attention's kernel picks for `n_seqs` queries on this cache's device.

    With a `max_context_len` fixed for a caller's lifetime (an engine's longest sequence) the
    result depends on n_seqs only: the engine computes it once per batch bucket and passes it
    in every step, so a decode step's grid is the same at every context length.
    """
    _, block_size, kv_heads, head_dim = k_cache.shape
    cfg = _kernels.decode_launch_config(head_dim, block_size, k_cache.dtype, max(1, n_heads // kv_heads))
    sms = torch.cuda.get_device_properties(k_cache.device).multi_processor_count if k_cache.is_cuda else None
    return _kernels.splits_for(n_seqs, kv_heads, cfg["TILE_N"], sms, max_context_len)
