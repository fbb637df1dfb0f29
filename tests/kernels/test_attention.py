"""Varlen flash-attention kernel (fastx.kernels.attention) against eager references, per NUMERICS.md.

Legend: T = packed tokens, H = query heads, K = kv heads, D = head dim, P = cache block size.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.attention import varlen_attention
from fastx.testing import assert_matches_reference


def _cu(lengths, device):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _visible(lq, lk, causal, alignment, device):
    """(Lq, Lk) bool: which keys each query sees."""
    if not causal:
        return torch.ones(lq, lk, dtype=torch.bool, device=device)
    offset = lk - lq if alignment == "bottom_right" else 0
    return torch.arange(lq, device=device)[:, None] + offset >= torch.arange(lk, device=device)[None, :]


def _reference(q, k, v, lens_q, lens_k, causal, alignment="bottom_right", scale=None, dtype=torch.float64):
    """Explicit softmax per sequence in `dtype`: out (T_q, H, D) and lse (H, T_q)."""
    n_heads, head_dim = q.shape[1], q.shape[2]
    group = n_heads // k.shape[1]
    scale = 1 / math.sqrt(head_dim) if scale is None else scale
    out = torch.zeros(q.shape, dtype=dtype, device=q.device)
    lse = torch.full((n_heads, q.shape[0]), float("-inf"), dtype=dtype, device=q.device)
    q0 = k0 = 0
    for lq, lk in zip(lens_q, lens_k):
        qs = q[q0 : q0 + lq].to(dtype).transpose(0, 1)  # (H, Lq, D)
        ks = k[k0 : k0 + lk].to(dtype).transpose(0, 1).repeat_interleave(group, 0)  # (H, Lk, D)
        vs = v[k0 : k0 + lk].to(dtype).transpose(0, 1).repeat_interleave(group, 0)
        seen = _visible(lq, lk, causal, alignment, q.device)
        scores = (qs @ ks.transpose(1, 2) * scale).masked_fill(~seen, float("-inf"))
        lse[:, q0 : q0 + lq] = torch.logsumexp(scores, dim=-1)
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a row that sees no key -> 0
        out[q0 : q0 + lq] = (probs @ vs).transpose(0, 1)
        q0, k0 = q0 + lq, k0 + lk
    return out, lse


def _eager(q, k, v, lens_q, lens_k, causal, alignment="bottom_right"):
    """torch SDPA per sequence in the inputs' own dtype: the yardstick of the low-precision rule."""
    out = torch.zeros_like(q)
    group = q.shape[1] // k.shape[1]
    q0 = k0 = 0
    for lq, lk in zip(lens_q, lens_k):
        if lq and lk:
            mask = _visible(lq, lk, causal, alignment, q.device)
            o = F.scaled_dot_product_attention(
                q[q0 : q0 + lq].transpose(0, 1),
                k[k0 : k0 + lk].transpose(0, 1).repeat_interleave(group, 0),
                v[k0 : k0 + lk].transpose(0, 1).repeat_interleave(group, 0),
                attn_mask=mask,
            )
            out[q0 : q0 + lq] = o.masked_fill(~mask.any(-1)[None, :, None], 0.0).transpose(0, 1)
        q0, k0 = q0 + lq, k0 + lk
    return out


def _inputs(lens_q, lens_k, n_heads, n_kv, head_dim, dtype, device):
    q = torch.randn(sum(lens_q), n_heads, head_dim, device=device).to(dtype)
    k = torch.randn(sum(lens_k), n_kv, head_dim, device=device).to(dtype)
    v = torch.randn(sum(lens_k), n_kv, head_dim, device=device).to(dtype)
    return q, k, v


# (lens_q, lens_k, H, K, D, causal, alignment, dtype): each of 1 token, the primes 37 and 131,
# lengths off the block grid, H/K = 1, 3, 4, D = 32, 64, 80, 128, unequal lengths, Lk > Lq,
# Lq > Lk (rows that see no key), zero-length sequences, top-left alignment, all three dtypes.
CASES = [
    ([1], [1], 2, 2, 32, False, "bottom_right", torch.float32),
    ([37], [37], 3, 1, 32, True, "bottom_right", torch.float16),
    ([131], [131], 4, 1, 64, False, "bottom_right", torch.bfloat16),
    ([1, 200], [1, 200], 2, 2, 32, True, "bottom_right", torch.bfloat16),
    ([5, 37], [40, 100], 4, 2, 80, True, "bottom_right", torch.float16),
    ([30], [70], 2, 1, 32, True, "top_left", torch.float32),
    ([30], [10], 2, 2, 32, True, "top_left", torch.bfloat16),
    ([30], [10], 1, 1, 32, True, "bottom_right", torch.float32),
    ([0, 17, 9, 0], [3, 0, 9, 0], 3, 1, 32, True, "bottom_right", torch.float32),
    ([20], [45], 2, 1, 128, False, "bottom_right", torch.float32),
    ([19], [19], 2, 1, 128, True, "bottom_right", torch.bfloat16),
]


@pytest.mark.parametrize("lens_q, lens_k, n_heads, n_kv, head_dim, causal, alignment, dtype", CASES)
def test_varlen_attention_matches_reference(device, lens_q, lens_k, n_heads, n_kv, head_dim, causal, alignment, dtype):
    q, k, v = _inputs(lens_q, lens_k, n_heads, n_kv, head_dim, dtype, device)
    out, lse = varlen_attention(
        q,
        k,
        v,
        _cu(lens_q, device),
        _cu(lens_k, device),
        max(lens_q),
        max(lens_k),
        causal=causal,
        causal_alignment=alignment,
        return_lse=True,
    )
    ref, ref_lse = _reference(q, k, v, lens_q, lens_k, causal, alignment)
    eager = _eager(q, k, v, lens_q, lens_k, causal, alignment)
    assert out.dtype == dtype and out.shape == q.shape and not out.isnan().any()
    assert_matches_reference(out, ref.to(torch.float32) if dtype != torch.float32 else ref, eager)
    # lse is fp32 from fp32 statistics; rows that see no key give -inf, as torch.logsumexp does.
    torch.testing.assert_close(lse, ref_lse.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_varlen_attention_random_batches(device, seed):
    # Random lengths in [0, 150) across the block grid, random causal alignment and H/K.
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 5, (1,), generator=gen))
    lens_q = torch.randint(0, 150, (batch,), generator=gen).tolist()
    lens_k = [lq + int(torch.randint(-20, 60, (1,), generator=gen)) for lq in lens_q]
    lens_k = [max(n, 0) for n in lens_k]
    n_kv = int(torch.randint(1, 3, (1,), generator=gen))
    n_heads = n_kv * int(torch.randint(1, 4, (1,), generator=gen))
    alignment = ["bottom_right", "top_left"][seed % 2]
    q, k, v = _inputs(lens_q, lens_k, n_heads, n_kv, 32, torch.float32, device)
    out = varlen_attention(
        q,
        k,
        v,
        _cu(lens_q, device),
        _cu(lens_k, device),
        max(lens_q),
        max(lens_k),
        causal=True,
        causal_alignment=alignment,
    )
    ref, _ = _reference(q, k, v, lens_q, lens_k, True, alignment)
    torch.testing.assert_close(out, ref.float())


def test_varlen_attention_custom_scale_and_non_contiguous_inputs(device):
    lens = [13, 29]
    qkv = torch.randn(sum(lens), 3 * 4, 32, device=device)  # (T, 3H, D) fused projection output
    q, k, v = qkv[:, :4], qkv[:, 4:6], qkv[:, 8:10]  # token strides of 3H * D: read in place
    out = varlen_attention(q, k, v, _cu(lens, device), _cu(lens, device), 29, 29, causal=True, scale=0.3)
    ref, _ = _reference(q, k, v, lens, lens, True, scale=0.3)
    torch.testing.assert_close(out, ref.float())
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)  # D stride != 1: copied once by the launcher
    torch.testing.assert_close(
        varlen_attention(q, k_t, v, _cu(lens, device), _cu(lens, device), 29, 29, causal=True, scale=0.3),
        out,
        rtol=0,
        atol=0,
    )


def _paged(k, lens_k, block_size, extra_blocks=3):
    """Scatter packed (T_k, K, D) keys into a shuffled paged cache: (cache, block_table)."""
    n_blocks = [math.ceil(n / block_size) for n in lens_k]
    width = max(n_blocks) + 1  # a table wider than any context, as an engine's is
    total = sum(n_blocks) + extra_blocks
    perm = torch.randperm(total, device=k.device)  # physical blocks in no particular order
    cache = torch.randn(total, block_size, *k.shape[1:], device=k.device).to(k.dtype)  # garbage outside contexts
    table = torch.full((len(lens_k), width), total - 1, dtype=torch.int32, device=k.device)
    used, k0 = 0, 0
    for b, n in enumerate(lens_k):
        for j in range(n_blocks[b]):
            phys = int(perm[used])
            used += 1
            table[b, j] = phys
            rows = k[k0 + j * block_size : k0 + min(n, (j + 1) * block_size)]
            cache[phys, : rows.shape[0]] = rows
        k0 += n
    return cache, table


@pytest.mark.parametrize("block_size, dtype", [(8, torch.float32), (16, torch.bfloat16), (32, torch.float16)])
def test_paged_attention_with_cached_prefix_equals_dense(device, block_size, dtype):
    # New tokens (Lq) after a cached prefix: Lk = prefix + Lq, bottom-right causal alignment.
    lens_q, lens_k = [7, 1, 20], [7 + 33, 1 + 5, 20 + 64]
    q, k, v = _inputs(lens_q, lens_k, 4, 2, 32, dtype, device)
    cu_q, cu_k = _cu(lens_q, device), _cu(lens_k, device)
    dense = varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    torch.manual_seed(1)
    k_cache, table = _paged(k, lens_k, block_size)
    torch.manual_seed(1)
    v_cache, table_v = _paged(v, lens_k, block_size)
    assert torch.equal(table, table_v)
    paged = varlen_attention(q, k_cache, v_cache, cu_q, cu_k, max(lens_q), max(lens_k), causal=True, block_table=table)
    # Same keys in the same tile positions: the gather must not change a single bit.
    torch.testing.assert_close(paged, dense, rtol=0, atol=0)
    ref, _ = _reference(q, k, v, lens_q, lens_k, True)
    eager = _eager(q, k, v, lens_q, lens_k, True)
    assert_matches_reference(paged, ref.float() if dtype != torch.float32 else ref, eager)


def test_empty_batch_gives_empty_output(device):
    q = torch.empty(0, 2, 32, device=device)
    cu = torch.zeros(3, dtype=torch.int32, device=device)
    out, lse = varlen_attention(q, q, q, cu, cu, 0, 0, return_lse=True)
    assert out.shape == (0, 2, 32) and lse.shape == (2, 0)


def _bad(**overrides):
    args = {
        "q": torch.randn(10, 4, 32),
        "k": torch.randn(12, 2, 32),
        "v": torch.randn(12, 2, 32),
        "cu_seqlens_q": torch.tensor([0, 4, 10], dtype=torch.int32),
        "cu_seqlens_k": torch.tensor([0, 5, 12], dtype=torch.int32),
        "max_seqlen_q": 6,
        "max_seqlen_k": 7,
    }
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"q": torch.randn(10, 4)}, "q: expected 3 dimensions"),
        ({"k": torch.randn(12, 2, 32, dtype=torch.float16)}, "k: expected dtype torch.float32"),
        ({"q": torch.ones(10, 4, 32, dtype=torch.int32)}, "q: expected dtype float32, float16 or bfloat16"),
        ({"v": torch.randn(12, 2, 16)}, "v: expected shape (12, 2, 32)"),
        ({"k": torch.randn(12, 3, 32), "v": torch.randn(12, 3, 32)}, "k: expected a kv head count dividing"),
        (
            {"q": torch.randn(10, 4, 8), "k": torch.randn(12, 2, 8), "v": torch.randn(12, 2, 8)},
            "q: expected head dim D in [16, 256]",
        ),
        ({"cu_seqlens_q": torch.tensor([0, 4, 10])}, "cu_seqlens_q: expected a 1-D int32 tensor"),
        ({"cu_seqlens_k": torch.tensor([0, 12], dtype=torch.int32)}, "cu_seqlens_k: expected shape (3,)"),
        ({"cu_seqlens_q": torch.tensor([1, 4, 10], dtype=torch.int32)}, "cu_seqlens_q: expected to start at 0"),
        ({"cu_seqlens_k": torch.tensor([0, 7, 5], dtype=torch.int32)}, "cu_seqlens_k: expected non-decreasing"),
        ({"cu_seqlens_q": torch.tensor([0, 4, 9], dtype=torch.int32)}, "cu_seqlens_q: expected to end at the token"),
        ({"max_seqlen_q": 5}, "max_seqlen of cu_seqlens_q: expected >= the longest sequence 6"),
        ({"causal_alignment": "middle"}, "causal_alignment: expected one of"),
    ],
)
def test_rejects_bad_arguments(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        varlen_attention(**_bad(**overrides))


@pytest.mark.parametrize(
    "table, message",
    [
        (torch.tensor([[0, 1], [2, 3]], dtype=torch.int64), "block_table: expected an int32 tensor of shape (2,"),
        (torch.tensor([[0], [2]], dtype=torch.int32), "block_table: expected room for the longest context 7"),
        (torch.tensor([[0, 1], [2, 9]], dtype=torch.int32), "block_table: expected entries in [0, 4) for sequence 1"),
    ],
)
def test_rejects_bad_block_table(table, message):
    cache = torch.randn(4, 4, 2, 32)  # (num_blocks, P, K, D)
    args = _bad(k=cache, v=cache, cu_seqlens_k=torch.tensor([0, 5, 12], dtype=torch.int32), block_table=table)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        varlen_attention(**args)
