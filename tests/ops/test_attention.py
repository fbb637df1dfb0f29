"""fastx.ops attention (SDPA drop-in and the packed varlen op) against torch, on both backends.

Legend: B = batch, H = query heads, K = kv heads, L = query length, S = key length, D = head dim.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fastx.ops.attention import scaled_dot_product_attention, varlen_attention
from fastx.testing import assert_matches_reference

BACKENDS = ["torch", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", request.param)
    return request.param


def _qkv(b, h, k, l, s, d, dtype, device):
    q = torch.randn(b, h, l, d, device=device).to(dtype)
    key = torch.randn(b, k, s, d, device=device).to(dtype)
    value = torch.randn(b, k, s, d, device=device).to(dtype)
    return q, key, value


def _forbid_eager(monkeypatch):
    """Make any call of torch's SDPA fail: proves the Triton path served the call."""

    def fail(*args, **kwargs):
        raise AssertionError("expected the Triton kernel, got torch SDPA")

    monkeypatch.setattr(F, "scaled_dot_product_attention", fail)


# (B, H, K, L, S, D, is_causal, enable_gqa): square, L < S and L > S under torch's top-left
# causal alignment, GQA (H / K = 3), a prime length.
SDPA_CASES = [
    (2, 3, 3, 37, 37, 32, False, False),
    (1, 2, 2, 20, 45, 32, True, False),
    (2, 2, 2, 45, 20, 32, True, False),
    (2, 6, 2, 17, 23, 64, False, True),
]


@pytest.mark.parametrize("b, h, k, l, s, d, is_causal, enable_gqa", SDPA_CASES)
def test_sdpa_matches_torch_fp32(device, backend, monkeypatch, b, h, k, l, s, d, is_causal, enable_gqa):
    q, key, value = _qkv(b, h, k, l, s, d, torch.float32, device)
    expected = F.scaled_dot_product_attention(q, key, value, is_causal=is_causal, enable_gqa=enable_gqa)
    if backend == "triton":
        _forbid_eager(monkeypatch)
    out = scaled_dot_product_attention(q, key, value, is_causal=is_causal, enable_gqa=enable_gqa)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


def test_sdpa_fp16_causal_gqa_against_fp64(device, backend):
    q, key, value = _qkv(1, 4, 1, 29, 40, 32, torch.float16, device)
    out = scaled_dot_product_attention(q, key, value, is_causal=True, enable_gqa=True, scale=0.2)
    ref = F.scaled_dot_product_attention(
        q.double(), key.double(), value.double(), is_causal=True, enable_gqa=True, scale=0.2
    )
    eager = F.scaled_dot_product_attention(q, key, value, is_causal=True, enable_gqa=True, scale=0.2)
    assert_matches_reference(out, ref.float(), eager)


def test_sdpa_non_contiguous_and_3d_inputs(device, backend):
    q = torch.randn(2, 19, 3, 32, device=device).transpose(1, 2)  # (B, H, L, D) view of (B, L, H, D)
    key = torch.randn(2, 3, 24, 32, device=device)
    value = torch.randn(2, 24, 3, 32, device=device).transpose(1, 2)
    expected = F.scaled_dot_product_attention(q, key, value)
    torch.testing.assert_close(scaled_dot_product_attention(q, key, value), expected)
    q3, k3, v3 = q[0], key[0], value[0]  # (H, L, D): torch treats the leading dim as batch
    expected = F.scaled_dot_product_attention(q3, k3, v3, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q3, k3, v3, is_causal=True), expected)


@pytest.mark.parametrize("per_batch", [True, False])
def test_sdpa_key_padding_mask(device, backend, monkeypatch, per_batch):
    q, key, value = _qkv(3, 4, 2, 11, 26, 32, torch.float32, device)
    keep = torch.rand(3, 26, device=device) > 0.4  # any pattern of valid keys, not just a prefix
    keep[:, 5] = True  # every batch has a valid key: torch's output is then defined everywhere
    mask = keep.view(3, 1, 1, 26) if per_batch else keep[:1]  # (B, 1, 1, S), or (1, S) shared by all
    expected = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, enable_gqa=True)
    if backend == "triton":
        _forbid_eager(monkeypatch)
    out = scaled_dot_product_attention(q, key, value, attn_mask=mask, enable_gqa=True)
    assert not out.isnan().any()
    torch.testing.assert_close(out, expected)


def test_sdpa_fully_padded_batch_gives_zeros_on_triton(device, monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    q, key, value = _qkv(2, 2, 2, 7, 9, 32, torch.float32, device)
    keep = torch.ones(2, 1, 1, 9, dtype=torch.bool, device=device)
    keep[1] = False  # batch 1 has no key at all: torch yields NaN, the kernel 0
    expected = F.scaled_dot_product_attention(q[:1], key[:1], value[:1])[0]
    _forbid_eager(monkeypatch)
    out = scaled_dot_product_attention(q, key, value, attn_mask=keep)
    torch.testing.assert_close(out[0], expected)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("kind", ["additive", "per_query_bool"])
def test_sdpa_general_masks_run_eager(device, backend, kind):
    q, key, value = _qkv(2, 2, 2, 13, 17, 32, torch.float32, device)
    if kind == "additive":
        mask = torch.randn(2, 1, 13, 17, device=device)
    else:
        mask = torch.rand(13, 17, device=device) > 0.3
        mask[:, 0] = True
    expected = F.scaled_dot_product_attention(q, key, value, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, key, value, attn_mask=mask), expected)


def test_sdpa_rejects_dropout(device, backend):
    q, key, value = _qkv(1, 1, 1, 4, 4, 32, torch.float32, device)
    with pytest.raises(ValueError, match="dropout_p: expected 0.0"):
        scaled_dot_product_attention(q, key, value, dropout_p=0.1)


def _varlen_reference(q, k, v, lens_q, lens_k, causal):
    """fp64 explicit softmax per sequence, bottom-right causal, rows that see no key -> 0."""
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    group = q.shape[1] // k.shape[1]
    q0 = k0 = 0
    for lq, lk in zip(lens_q, lens_k):
        qs = q[q0 : q0 + lq].double().transpose(0, 1)
        ks = k[k0 : k0 + lk].double().transpose(0, 1).repeat_interleave(group, 0)
        vs = v[k0 : k0 + lk].double().transpose(0, 1).repeat_interleave(group, 0)
        scores = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
        if causal:
            seen = torch.arange(lq, device=q.device)[:, None] + lk - lq >= torch.arange(lk, device=q.device)[None, :]
            scores = scores.masked_fill(~seen, float("-inf"))
        out[q0 : q0 + lq] = (torch.softmax(scores, -1).nan_to_num(0.0) @ vs).transpose(0, 1)
        q0, k0 = q0 + lq, k0 + lk
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_op_matches_reference(device, backend, causal):
    lens_q, lens_k = [1, 0, 23, 9], [6, 4, 23, 3]  # cached prefixes (Lk > Lq), Lq > Lk, an empty sequence
    q = torch.randn(sum(lens_q), 4, 32, device=device)
    k = torch.randn(sum(lens_k), 2, 32, device=device)
    v = torch.randn(sum(lens_k), 2, 32, device=device)
    cu_q = torch.tensor([0, 1, 1, 24, 33], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 6, 10, 33, 36], dtype=torch.int32, device=device)
    out = varlen_attention(q, k, v, cu_q, cu_k, 23, 23, causal=causal)
    assert not out.isnan().any()
    torch.testing.assert_close(out, _varlen_reference(q, k, v, lens_q, lens_k, causal).float())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_varlen_attention_over_a_paged_cache_equals_dense(backend, monkeypatch, device):
    """A prompt whose prefix is cached: its new queries attend through the block table."""
    monkeypatch.setenv("FASTX_BACKEND", backend)
    torch.manual_seed(3)
    page, heads, kv_heads, dim = 8, 4, 2, 32
    contexts, new = [19, 5], [3, 5]  # cached prefix + new tokens per sequence
    k_all = [torch.randn(n, kv_heads, dim, device=device) for n in contexts]
    v_all = [torch.randn(n, kv_heads, dim, device=device) for n in contexts]
    blocks = torch.randperm(10, device=device)  # shuffled physical blocks
    k_cache = torch.zeros(10, page, kv_heads, dim, device=device)
    v_cache = torch.zeros_like(k_cache)
    table = torch.zeros(2, 3, dtype=torch.int32, device=device)
    used = 0
    for b, n in enumerate(contexts):
        for j in range(n):
            if j % page == 0:
                table[b, j // page] = blocks[used]
                used += 1
            k_cache[table[b, j // page], j % page] = k_all[b][j]
            v_cache[table[b, j // page], j % page] = v_all[b][j]
    q = torch.randn(sum(new), heads, dim, device=device)
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
    cu_k = torch.tensor([0, 19, 24], dtype=torch.int32, device=device)
    got = varlen_attention(q, k_cache, v_cache, cu_q, cu_k, 5, 19, causal=True, block_table=table)
    monkeypatch.setenv("FASTX_BACKEND", "torch")
    dense = varlen_attention(q, torch.cat(k_all), torch.cat(v_all), cu_q, cu_k, 5, 19, causal=True)
    torch.testing.assert_close(got, dense)
