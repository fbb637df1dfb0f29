"""fastx.ops.paged_attention: the eager PyTorch path and the Triton path give the same results."""

import math

import pytest
import torch

from fastx.ops.paged_attention import paged_decode_attention, write_kv_cache
from fastx.testing import assert_matches_reference


def _setup(lens, kv_heads, head_dim, block_size, dtype, device):
    need = [math.ceil(n / block_size) for n in lens]
    n_blocks = sum(need) + 3
    k_cache = torch.randn(n_blocks, block_size, kv_heads, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    pool = torch.randperm(n_blocks).tolist()
    tables = torch.zeros(len(lens), max(need) + 1, dtype=torch.int32)
    for i, n in enumerate(need):
        tables[i, :n] = torch.tensor([pool.pop() for _ in range(n)], dtype=torch.int32)
    return k_cache, v_cache, tables.to(device), torch.tensor(lens, dtype=torch.int32, device=device)


def _reference_fp64(q, k_cache, v_cache, tables, lens):
    """Dense fp64 attention over each gathered context (zeros for an empty one)."""
    _, block_size, kv_heads, head_dim = k_cache.shape
    group = q.shape[1] // kv_heads
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    for i, n in enumerate(lens):
        if n:
            blocks = tables[i, : math.ceil(n / block_size)].long()
            k = k_cache[blocks].reshape(-1, kv_heads, head_dim)[:n].double().repeat_interleave(group, 1)  # (n, H, D)
            v = v_cache[blocks].reshape(-1, kv_heads, head_dim)[:n].double().repeat_interleave(group, 1)
            p = torch.softmax(torch.einsum("hd,nhd->hn", q[i].double(), k) / math.sqrt(head_dim), dim=-1)
            out[i] = torch.einsum("hn,nhd->hd", p, v)
    return out


def _run_both(monkeypatch, fn):
    monkeypatch.setenv("FASTX_BACKEND", "torch")
    eager = fn()
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    triton_out = fn()
    return eager, triton_out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_cache_backends_agree(monkeypatch, device, dtype):
    key = torch.randn(6, 2, 5 * 32, device=device).to(dtype)[..., 32:64]  # strided (T, K, D) view
    value = torch.randn(6, 2, 32, device=device).to(dtype)
    slots = torch.tensor([3, -1, 17, 8, -1, 30], device=device)
    base = torch.randn(4, 8, 2, 32, device=device).to(dtype)

    def write():
        k_cache, v_cache = base.clone(), base.clone() + 1
        write_kv_cache(key, value, k_cache, v_cache, slots)
        return k_cache, v_cache

    (k_eager, v_eager), (k_triton, v_triton) = _run_both(monkeypatch, write)
    torch.testing.assert_close(k_triton, k_eager, rtol=0, atol=0)
    torch.testing.assert_close(v_triton, v_eager, rtol=0, atol=0)
    assert not torch.equal(k_eager, base)


@pytest.mark.parametrize(
    "dtype, head_dim, block_size, n_heads, kv_heads, lens, num_splits",
    [
        (torch.float32, 64, 16, 8, 2, [1, 37, 0], None),
        (torch.bfloat16, 80, 8, 3, 1, [131, 5], 32),
        (torch.float16, 32, 32, 4, 4, [70], 16),
    ],
)
def test_paged_decode_backends_agree(
    monkeypatch, device, dtype, head_dim, block_size, n_heads, kv_heads, lens, num_splits
):
    k_cache, v_cache, tables, context_lens = _setup(lens, kv_heads, head_dim, block_size, dtype, device)
    q = torch.randn(len(lens), n_heads, head_dim, device=device).to(dtype)
    call = lambda: paged_decode_attention(q, k_cache, v_cache, tables, context_lens, num_splits=num_splits)  # noqa: E731
    eager, triton_out = _run_both(monkeypatch, call)
    assert eager.shape == triton_out.shape == q.shape and eager.dtype == triton_out.dtype == dtype
    ref = _reference_fp64(q, k_cache, v_cache, tables, lens)
    assert_matches_reference(triton_out, ref, eager)
    assert eager[context_lens == 0].abs().sum() == 0 and triton_out[context_lens == 0].abs().sum() == 0


def test_ops_validate_on_both_backends(monkeypatch):
    q = torch.randn(2, 3, 16)
    k_cache = torch.randn(2, 8, 2, 16)
    for backend in ("torch", "triton"):
        monkeypatch.setenv("FASTX_BACKEND", backend)
        with pytest.raises(ValueError, match="q: expected a head count divisible by the cache's 2 kv heads, got 3"):
            paged_decode_attention(
                q, k_cache, k_cache, torch.zeros(2, 1, dtype=torch.int32), torch.ones(2, dtype=torch.int32)
            )
        with pytest.raises(ValueError, match="slot_mapping: expected slots < num_blocks"):
            write_kv_cache(q[:, :2], q[:, :2], k_cache, k_cache.clone(), torch.tensor([0, 16]))


@pytest.mark.parametrize("length", [0, 1, 17, 40])
def test_paged_decode_single_sequence_is_cut_at_its_own_length(device, length):
    """Batch-1 decode reads exactly its context, even when max_context_len (a bound: here the
    table's whole capacity, one block more than the context needs) is larger."""
    k_cache, v_cache, tables, context_lens = _setup([length], 2, 32, 16, torch.float32, device)
    q = torch.randn(1, 4, 32, device=device)
    out = paged_decode_attention(
        q, k_cache, v_cache, tables, context_lens, max_context_len=tables.shape[1] * 16, validate=False
    )
    ref = _reference_fp64(q, k_cache, v_cache, tables, [length])
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=1e-5, atol=1e-5)
