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
    q, k_cache, v_cache, block_tables, context_lens, scale=None, max_context_len=None, partition_size=None,
    *, validate: bool = True,
) -> torch.Tensor:
    """Decode attention of q (S, H, D) over each sequence's paged context; returns (S, H, D) in q's dtype.

    See fastx.kernels.paged_attention.paged_decode_attention for the arguments; the eager path
    ignores partition_size (it only shapes the kernel's grid). validate=False: as in write_kv_cache.
    """
    if use_triton(q, k_cache, v_cache, block_tables, context_lens):
        return _kernels.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, scale, max_context_len, partition_size
        )
    if validate:
        _kernels.check_decode_args(q, k_cache, v_cache, block_tables, context_lens, max_context_len, partition_size)
    n_seqs, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if n_seqs == 0:
        return torch.zeros_like(q)
    # One batched gather and one batched matmul for all sequences (a per-sequence loop cost
    # ~10x more per decode step on the CPU); index_select and plain matmuls, because
    # advanced indexing (~200 us) and the CPU flash-SDPA kernel (~570 us) dominated a
    # SmolLM2 decode step at these sizes. Contexts are cut at the longest and shorter ones
    # masked: a single sequence (batch-1 decode) needs no mask at all.
    lens = context_lens.long()
    if n_seqs == 1:  # its own length: no padding to mask
        longest = int(lens[0])
    else:
        longest = max_context_len if max_context_len is not None and not validate else int(lens.max())
    width = max(-(-longest // block_size), 1)
    tables = block_tables[:, :width].reshape(-1).long()  # (S * W,)
    k = _gather_head_major(k_cache, tables, n_seqs, longest)  # (S, K, L, D)
    v = _gather_head_major(v_cache, tables, n_seqs, longest)
    qg = q.reshape(n_seqs, kv_heads, n_heads // kv_heads, head_dim).to(_COMPUTE)  # (S, K, G, D): a group per kv head
    # K read transposed in place by the batched GEMM: materialising (S, K, D, L) was a
    # strided transpose copy that cost more than both matmuls at batch 16.
    scores = torch.matmul(qg, k.transpose(-1, -2)).mul_(scale)  # (S, K, G, L)
    if n_seqs > 1:
        hidden = torch.arange(longest, device=q.device)[None, :] >= lens[:, None]  # (S, L) past each context
        scores.masked_fill_(hidden[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a context of 0 tokens -> zeros, never NaN
    else:  # one sequence, cut at its own length (a 0-token context has L = 0: zeros)
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v)  # (S, K, G, D)
    return out.reshape(n_seqs, n_heads, head_dim).to(q.dtype)


_COMPUTE = torch.float32  # fp32 softmax and accumulation, as in the kernel


def _gather_head_major(cache: torch.Tensor, tables: torch.Tensor, n_seqs: int, length: int) -> torch.Tensor:
    """The first `length` tokens of each sequence's blocks, (S, K, L, D) contiguous in fp32.

    index_select copies whole blocks (N, B, K, D) -> (S, W * B, K, D); one copy then brings
    each head's keys together (rows of D stay contiguous, so it is a cheap strided copy).
    """
    _, block_size, kv_heads, head_dim = cache.shape
    gathered = cache.index_select(0, tables).view(n_seqs, -1, kv_heads, head_dim)[:, :length]
    return gathered.transpose(1, 2).to(_COMPUTE).contiguous()
