"""Attention ops: the packed variable-length API and a drop-in for F.scaled_dot_product_attention.

Legend: B = batch, H = query heads, K = kv heads, L = query length, S = key length,
D = head dim, T = packed tokens.

Which path runs (`use_triton`): the Triton flash-attention kernel (fastx.kernels.attention)
or eager PyTorch, with the same semantics. In `scaled_dot_product_attention` the kernel takes
no mask, `is_causal` (torch's top-left alignment) and boolean key-padding masks; every other
mask (additive float masks, per-query boolean masks, a mask together with is_causal) runs
torch's own SDPA even on the Triton backend, as does a value head dim that differs from the
query's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastx.kernels.attention import varlen_attention as _varlen_attention_kernel
from fastx.ops._backend import use_triton


def _eager_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale):
    """Per-sequence torch SDPA: bottom-right causal alignment, GQA through SDPA's enable_gqa.

    Each sequence goes in as a 4-D (1, H, L, D) view: torch's CPU SDPA runs its flash kernel on 4-D
    inputs and a far slower path on 3-D (H, L, D) ones (a 220-token MiniLM sequence: 8-16 ms
    against 28-127 ms on a busy 2-core EPYC), and repeat_interleave'd K/V were a copy per call.
    A square causal block (no cached prefix) takes is_causal, faster again than a boolean mask.
    """
    gqa = q.shape[1] != k.shape[1]
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    pieces = [q.new_zeros(bounds_q[0], *q.shape[1:])]  # the packed rows in order, concatenated once
    for b in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[b], bounds_q[b + 1], bounds_k[b], bounds_k[b + 1]
        if q1 == q0:
            continue
        if k1 == k0:
            pieces.append(q.new_zeros(q1 - q0, *q.shape[1:]))  # no key to see: the rows are 0
            continue
        lq, lk = q1 - q0, k1 - k0
        qs, ks, vs = (x[None].transpose(1, 2) for x in (q[q0:q1], k[k0:k1], v[k0:k1]))  # (1, heads, L, D)
        mask = None
        if causal and lq != lk:
            rows = torch.arange(lq, device=q.device)[:, None] + (lk - lq)
            mask = rows >= torch.arange(lk, device=q.device)[None, :]  # (Lq, Lk) bottom-right
        square_causal = causal and lq == lk  # bottom-right and top-left alignment agree
        o = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, is_causal=square_causal, scale=scale, enable_gqa=gqa
        )[0]
        if mask is not None and lq > lk:
            o = o.masked_fill(~mask.any(dim=-1)[None, :, None], 0.0)  # rows that see no key -> 0
        pieces.append(o.transpose(0, 1))
    pieces.append(q.new_zeros(q.shape[0] - bounds_q[-1], *q.shape[1:]))  # rows past the last sequence
    return torch.cat(pieces)


def _gather_paged(cache: torch.Tensor, block_table: torch.Tensor, cu_seqlens_k: torch.Tensor) -> torch.Tensor:
    """(num_blocks, P, K, D) cache -> packed (T_k, K, D) keys of every sequence, in order."""
    page = cache.shape[1]
    flat = cache.reshape(-1, *cache.shape[2:])  # (num_blocks * P, K, D)
    lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
    slots = []
    for b, n in enumerate(lengths):
        j = torch.arange(n, device=cache.device)
        slots.append(block_table[b, j // page].long() * page + j % page)
    return flat[torch.cat(slots)] if slots else flat[:0]


def varlen_attention(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, scale=None, block_table=None
):
    """Attention over a packed batch: q (T_q, H, D), k/v (T_k, K, D), int32 cu_seqlens (B + 1,).

    Causal masks use bottom-right alignment (query i sees keys j <= i + Lk - Lq), which is what
    chunked prefill and cached prefixes need; a row that sees no key outputs 0.
    With `block_table` (B, max_blocks) int32, k and v are paged caches (num_blocks, P, K, D)
    and cu_seqlens_k holds cumulative context lengths in the cache (see fastx.kernels.attention).
    """
    if use_triton(q, k, v):
        return _varlen_attention_kernel(
            q,
            k,
            v,
            cu_seqlens_q,
            cu_seqlens_k,
            max_seqlen_q,
            max_seqlen_k,
            causal=causal,
            scale=scale,
            block_table=block_table,
        )
    if block_table is not None:
        k, v = _gather_paged(k, block_table, cu_seqlens_k), _gather_paged(v, block_table, cu_seqlens_k)
    return _eager_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale)


def _key_padding_rows(attn_mask, batch, seq_k):
    """The mask as (B, S) when it is boolean and broadcastable to (B, 1, 1, S), else None."""
    if attn_mask.dtype != torch.bool or attn_mask.dim() > 4:
        return None
    shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
    if shape[1] != 1 or shape[2] != 1 or shape[0] not in (1, batch) or shape[3] not in (1, seq_k):
        return None
    return attn_mask.reshape(shape[0], shape[3]).expand(batch, seq_k)


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """Drop-in for F.scaled_dot_product_attention (inference only: dropout_p must be 0).

    query (..., H, L, D), key/value (..., K, S, D). On the Triton backend:
    - no mask: the kernel reads the (B, H, L, D) tensors in place (no packing copy);
      is_causal is torch's top-left alignment (`ones(L, S).tril()`);
    - a boolean key-padding mask broadcastable to (B, 1, 1, S) (True = attend, any pattern):
      the valid keys of each batch are gathered into a packed varlen batch, so no work is
      spent on padding; a query whose batch has no valid key outputs 0 (torch gives NaN);
    - anything else (float/additive masks, per-query masks, mask with is_causal, a value head
      dim unlike the query's, batch dims that differ between query and key) runs torch SDPA.
    """
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p: expected 0.0 (fastx attention is inference only), got {dropout_p}")

    def eager():
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa
        )

    if not use_triton(query, key, value, attn_mask):
        return eager()
    if query.dim() < 2 or key.dim() != query.dim() or value.dim() != query.dim():
        return eager()  # torch raises its own error for malformed ranks
    lead = query.shape[:-3]
    if key.shape[:-3] != lead or value.shape[:-3] != lead or value.shape[:-1] != key.shape[:-1]:
        return eager()
    if value.shape[-1] != query.shape[-1] or key.shape[-1] != query.shape[-1] or not 16 <= query.shape[-1] <= 256:
        return eager()
    # (..., H, L, D) -> (B, H, L, D); 2-D and 3-D inputs get unit batch/head dims as in torch.
    q4 = query.reshape(-1, *query.shape[-3:]) if query.dim() >= 3 else query[None, None]
    k4 = key.reshape(-1, *key.shape[-3:]) if key.dim() >= 3 else key[None, None]
    v4 = value.reshape(-1, *value.shape[-3:]) if value.dim() >= 3 else value[None, None]
    batch, n_heads, seq_q, head_dim = q4.shape
    n_kv, seq_k = k4.shape[1], k4.shape[2]
    if n_heads != n_kv and not (enable_gqa and n_kv > 0 and n_heads % n_kv == 0):
        return eager()  # torch raises the mismatch error
    padding = None
    if attn_mask is not None:
        padding = _key_padding_rows(attn_mask, batch, seq_k) if (query.dim() == 4 and not is_causal) else None
        if padding is None:
            return eager()
    out = _dense_attention(q4, k4, v4, padding, is_causal, scale)  # (B, H, L, D)
    return out.reshape(query.shape)


def _token_major(x):
    """(B, N, L, D) -> ((B * L, N, D) view, stride_z) such that token t of batch b sits at
    b * stride_z + (b * L + t) * stride_t, the kernel's addressing with cu = b * L.

    The (B, L, N, D) transpose of x is read in place when its D stride is 1 (a view with any
    batch stride); otherwise, or if the flattened view would not fit x's storage, it is copied.
    """
    batch, heads, length, dim = x.shape
    xt = x.transpose(1, 2)  # (B, L, N, D)
    if xt.stride(-1) == 1:
        try:
            view = xt.as_strided((batch * length, heads, dim), (xt.stride(1), xt.stride(2), 1))
            return view, xt.stride(0) - length * xt.stride(1)
        except RuntimeError:
            pass  # the flattened view would reach past the storage: copy instead
    return xt.contiguous().view(batch * length, heads, dim), 0


def _dense_attention(q, k, v, padding, is_causal, scale):
    """(B, H, L, D) attention by the varlen kernel, reading q (and k/v without padding) in place."""
    batch, n_heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    dev = q.device
    out = torch.empty((batch, n_heads, seq_q, head_dim), dtype=q.dtype, device=dev)
    q_arg, sz_q = _token_major(q)
    o_arg, sz_o = _token_major(out)
    cu_q = torch.arange(0, (batch + 1) * seq_q, seq_q, dtype=torch.int32, device=dev)
    if padding is None:
        k_arg, sz_k = _token_major(k)
        v_arg, sz_v = _token_major(v)
        cu_k = torch.arange(0, (batch + 1) * seq_k, seq_k, dtype=torch.int32, device=dev)
    else:
        keep = padding.to(dev)  # (B, S) True = attend
        k_arg = k.transpose(1, 2)[keep]  # (T_k, K, D): only the valid keys, packed
        v_arg = v.transpose(1, 2)[keep]
        sz_k = sz_v = 0
        cu_k = torch.zeros(batch + 1, dtype=torch.int32, device=dev)
        cu_k[1:] = torch.cumsum(keep.sum(dim=1, dtype=torch.int32), 0)
    _varlen_attention_kernel(
        q_arg,
        k_arg,
        v_arg,
        cu_q,
        cu_k,
        seq_q,
        seq_k,
        causal=is_causal,
        scale=scale,
        causal_alignment="top_left",
        _batch_strides=(sz_q, sz_k, sz_v, sz_o),
        _out=o_arg,
    )
    return out
