"""Paged KV cache kernels (fastx.kernels.paged_attention) against dense eager attention, per NUMERICS.md.

Legend: S = sequences, T = tokens, H = query heads, K = kv heads, D = head dim, N = cache blocks,
B = tokens per block.
"""

import math
import re

import pytest
import torch

from fastx.kernels.paged_attention import MAX_NUM_SPLITS, paged_decode_attention, splits_for, write_kv_cache
from fastx.testing import assert_matches_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _fused_kv(n_tokens, kv_heads, head_dim, dtype, device):
    """key, value as (T, K, D) slices of one fused qkv row: strided views with unit last stride."""
    qkv = torch.randn(n_tokens, (2 + 2 * kv_heads) * head_dim, device=device).to(dtype)
    key = qkv[:, 2 * head_dim : (2 + kv_heads) * head_dim].view(n_tokens, kv_heads, head_dim)
    value = qkv[:, (2 + kv_heads) * head_dim :].view(n_tokens, kv_heads, head_dim)
    return key, value


def _paged_setup(context_lens, kv_heads, head_dim, block_size, dtype, device, spare_blocks=5):
    """Caches holding each context in shuffled, non-contiguous blocks of a larger pool.

    Unused block-table entries are -1: the kernel must never read them.
    """
    need = [math.ceil(n / block_size) for n in context_lens]
    max_blocks = max(need + [0]) + 1
    n_blocks = sum(need) + spare_blocks
    k_cache = torch.randn(n_blocks, block_size, kv_heads, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    pool = torch.randperm(n_blocks).tolist()
    tables = torch.full((len(context_lens), max_blocks), -1, dtype=torch.int32)
    for i, n in enumerate(need):
        tables[i, :n] = torch.tensor([pool.pop() for _ in range(n)], dtype=torch.int32)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return k_cache, v_cache, tables.to(device), lens.to(device)


def _dense_attention(q, k_cache, v_cache, tables, lens, scale, dtype):
    """Gather each context densely, then softmax(q k^T * scale) v computed in `dtype`."""
    n_seqs, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    for i, n in enumerate(lens.tolist()):
        if n == 0:
            continue
        blocks = tables[i, : math.ceil(n / block_size)].long()
        k = k_cache[blocks].reshape(-1, kv_heads, head_dim)[:n].to(dtype)  # (n, K, D)
        v = v_cache[blocks].reshape(-1, kv_heads, head_dim)[:n].to(dtype)
        group = n_heads // kv_heads
        k = k.repeat_interleave(group, dim=1).transpose(0, 1)  # (H, n, D)
        v = v.repeat_interleave(group, dim=1).transpose(0, 1)
        logits = (q[i].to(dtype)[:, None, :] @ k.transpose(1, 2)) * scale  # (H, 1, n)
        out[i] = (torch.softmax(logits, dim=-1) @ v)[:, 0]
    return out


# -- write_kv_cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
def test_write_kv_cache_scatters_and_skips_padding(device, dtype, slot_dtype):
    n_tokens, kv_heads, head_dim, block_size, n_blocks = 7, 3, 80, 8, 5
    key, value = _fused_kv(n_tokens, kv_heads, head_dim, dtype, device)
    assert not key.is_contiguous()
    k_cache = torch.randn(n_blocks, block_size, kv_heads, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    slots = torch.randperm(n_blocks * block_size)[:n_tokens]
    slots[[1, 4]] = -1  # padding tokens
    write_kv_cache(key, value, k_cache, v_cache, slots.to(slot_dtype).to(device))

    expect_k, expect_v = k_before, v_before  # updated below through flat slot views
    real = slots >= 0
    expect_k.view(-1, kv_heads, head_dim)[slots[real]] = key[real.to(device)]
    expect_v.view(-1, kv_heads, head_dim)[slots[real]] = value[real.to(device)]
    # Exact copies; every other slot (padding targets included) untouched.
    torch.testing.assert_close(k_cache, expect_k, rtol=0, atol=0)
    torch.testing.assert_close(v_cache, expect_v, rtol=0, atol=0)


def test_write_kv_cache_empty_and_errors(device):
    key = torch.randn(2, 2, 16, device=device)
    k_cache = torch.zeros(2, 8, 2, 16, device=device)
    v_cache = torch.zeros_like(k_cache)
    write_kv_cache(key[:0], key[:0], k_cache, v_cache, torch.zeros(0, dtype=torch.int64, device=device))
    assert k_cache.abs().max() == 0
    cases = [
        ((key, key[:1], k_cache, v_cache, torch.zeros(2, dtype=torch.int32)), "value: expected shape (2, 2, 16)"),
        ((key, key, k_cache[..., :8], v_cache, torch.zeros(2, dtype=torch.int32)), "k_cache: expected"),
        ((key, key, k_cache, v_cache.half(), torch.zeros(2, dtype=torch.int32)), "v_cache: expected dtype"),
        ((key, key, k_cache, v_cache, torch.zeros(2)), "slot_mapping: expected shape (2,) of int32/int64"),
        ((key, key, k_cache, v_cache, torch.tensor([0, 16])), "slot_mapping: expected slots < num_blocks"),
    ]
    for args, message in cases:
        args = tuple(a.to(device) for a in args)
        if device == "cuda" and "slots <" in message:
            continue  # value checks need FASTX_DEBUG=1 on CUDA
        with pytest.raises(ValueError, match=re.escape(message)):
            write_kv_cache(*args)


# -- paged_decode_attention --------------------------------------------------------------------

# (dtype, D, B, H, K, context lens, num_splits): every D of 32/64/80/128, B of 8/16/32,
# H/K of 1/3/4, lengths 1, 37 (not a multiple of B), 131, a batch of 1 and 200, empty contexts,
# a ~1000-token context over several partitions (split-K + merge), one split, and more splits
# than a short context has tiles (the surplus partitions are empty).
CASES = [
    (torch.float32, 64, 16, 4, 4, [1, 37, 131], None),
    (torch.float16, 32, 8, 6, 2, [37, 5], None),
    (torch.bfloat16, 80, 32, 8, 2, [131, 1], None),
    (torch.bfloat16, 128, 16, 8, 2, [1, 200], None),
    (torch.float16, 128, 16, 3, 1, [1000, 37], 8),
    (torch.float32, 64, 8, 6, 2, [0, 37, 300], 1),
    (torch.float32, 64, 8, 6, 2, [0, 37, 300], 13),
    (torch.bfloat16, 64, 16, 3, 3, [0, 0], None),
]


@pytest.mark.parametrize("dtype, head_dim, block_size, n_heads, kv_heads, lens, num_splits", CASES)
def test_paged_decode_matches_dense_attention(device, dtype, head_dim, block_size, n_heads, kv_heads, lens, num_splits):
    k_cache, v_cache, tables, context_lens = _paged_setup(lens, kv_heads, head_dim, block_size, dtype, device)
    # q as a strided slice of a fused projection (unit last stride, gaps between sequences).
    q = torch.randn(len(lens), n_heads + 2, head_dim, device=device).to(dtype)[:, 1:-1]
    scale = 1.0 / math.sqrt(head_dim)
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, num_splits=num_splits)
    assert out.shape == q.shape and out.dtype == dtype
    ref = _dense_attention(q, k_cache, v_cache, tables, context_lens, scale, torch.float64)
    eager = _dense_attention(q, k_cache, v_cache, tables, context_lens, scale, dtype)
    assert_matches_reference(out, ref, eager)
    for i, n in enumerate(lens):
        if n == 0:
            assert out[i].abs().max() == 0


def test_paged_decode_scale_and_max_context_len(device):
    lens = [37, 20]
    k_cache, v_cache, tables, context_lens = _paged_setup(lens, 2, 64, 16, torch.float32, device)
    q = torch.randn(2, 4, 64, device=device)
    ref = _dense_attention(q, k_cache, v_cache, tables, context_lens, 0.3, torch.float32)
    # A generous host-side bound only caps the default split count less.
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, scale=0.3, max_context_len=200)
    torch.testing.assert_close(out, ref)
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, scale=0.3, max_context_len=37)
    torch.testing.assert_close(out, ref)


def test_paged_decode_empty_batch(device):
    k_cache = torch.zeros(2, 16, 2, 64, device=device)
    out = paged_decode_attention(
        torch.zeros(0, 4, 64, device=device),
        k_cache,
        k_cache,
        torch.zeros(0, 2, dtype=torch.int32, device=device),
        torch.zeros(0, dtype=torch.int32, device=device),
    )
    assert out.shape == (0, 4, 64)


def _bad_decode_cases():
    q = torch.randn(2, 4, 64)
    kc = torch.randn(6, 16, 2, 64)
    bt = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
    cl = torch.tensor([20, 5], dtype=torch.int32)
    i32 = torch.int32
    return [
        ((q[0], kc, kc, bt, cl), {}, "q: expected 3 dimensions"),
        ((q[..., :32], kc, kc, bt, cl), {}, "k_cache: expected shape (num_blocks, block_size, K, 32)"),
        (
            (torch.randn(2, 3, 64), kc, kc, bt, cl),
            {},
            "q: expected a head count divisible by the cache's 2 kv heads, got 3",
        ),
        ((q, kc, kc.half(), bt, cl), {}, "v_cache: expected dtype torch.float32"),
        ((q, kc, kc[:5], bt, cl), {}, "v_cache: expected shape (6, 16, 2, 64)"),
        ((q, kc, kc, bt.long(), cl), {}, "block_tables: expected shape (2, max_blocks) of int32"),
        ((q, kc, kc, bt[:1], cl), {}, "block_tables: expected shape (2, max_blocks)"),
        ((q, kc, kc, bt, cl.long()), {}, "context_lens: expected shape (2,) of int32"),
        (
            (q, kc, kc, bt, torch.tensor([33, 5], dtype=i32)),
            {},
            "context_lens: expected values in [0, max_blocks * block_size = 32], got [5, 33]",
        ),
        ((q, kc, kc, bt, torch.tensor([-1, 5], dtype=i32)), {}, "context_lens: expected values in"),
        (
            (q, kc, kc, torch.tensor([[0, 6], [2, 3]], dtype=i32), cl),
            {},
            "block_tables: expected used entries in [0, 6)",
        ),
        ((q, kc, kc, bt, cl), {"max_context_len": 10}, "max_context_len: expected >= the longest context 20"),
        ((q, kc, kc, bt, cl), {"num_splits": 0}, f"num_splits: expected an integer in [1, {MAX_NUM_SPLITS}], got 0"),
        ((q, kc, kc, bt, cl), {"num_splits": 2.0}, "num_splits: expected an integer in"),
    ]


@pytest.mark.parametrize("args, kwargs, message", _bad_decode_cases())
def test_paged_decode_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        paged_decode_attention(*args, **kwargs)


def test_paged_decode_ignores_unused_table_entries():
    # Entries past a context's last block may be garbage (here out of range): never checked or read.
    q = torch.randn(1, 2, 32)
    kc = torch.randn(3, 8, 1, 32)
    bt = torch.tensor([[2, 99, -7]], dtype=torch.int32)
    cl = torch.tensor([5], dtype=torch.int32)
    out = paged_decode_attention(q, kc, kc, bt, cl)
    torch.testing.assert_close(out, _dense_attention(q, kc, kc, bt, cl, 32**-0.5, torch.float32))


@pytest.mark.parametrize(
    "n_seqs, kv_heads, tile_n, sms, bound, expected",
    [
        (1, 3, 64, 132, None, 44),  # batch 1, 3 kv heads: 132 programs, not 3
        (1, 8, 64, 132, None, 17),  # batch 1, 8 kv heads: 136 programs
        (64, 8, 64, 132, None, 1),  # a full batch fills the GPU already: no split
        (1, 1, 16, 132, None, MAX_NUM_SPLITS),  # never more than the merge's bound
        (1, 8, 64, 132, 200, 4),  # a context bound caps it: no partition without a tile
        (1, 8, 64, None, None, 4),  # no GPU: the default
    ],
)
def test_splits_fill_the_sms(n_seqs, kv_heads, tile_n, sms, bound, expected):
    assert splits_for(n_seqs, kv_heads, tile_n, sms, bound) == expected


def test_results_do_not_depend_on_the_split(device):
    """The same decode under every split count the sizing can pick: one partition to many."""
    torch.manual_seed(1)
    q = torch.randn(2, 4, 64, device=device)
    k_cache, v_cache = torch.randn(2, 24, 16, 2, 64, device=device).unbind(0)
    tables = torch.randperm(24, device=device).to(torch.int32).view(2, 12)
    lens = torch.tensor([190, 37], dtype=torch.int32, device=device)
    outs = [paged_decode_attention(q, k_cache, v_cache, tables, lens, num_splits=p) for p in (1, 3, 12, 64)]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])
