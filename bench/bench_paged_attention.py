"""Paged decode attention: fastx's split-K Triton kernel vs a dense gather + torch SDPA (eager).

Legend: S = sequences (batch), L = context length, H = query heads, K = kv heads, D = head dim.
Bytes per call = 2 * S * L * K * D * elem   (K and V read once per kv head)
               + 2 * S * H * D * elem       (q read, out written)
The eager baseline gathers k_cache[block_tables] into a dense (S, K, L, D) copy and runs SDPA
with enable_gqa; it moves more bytes than the formula, which counts only what must be read.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.paged_attention import paged_decode_attention

N_HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
BATCHES = [1, 8, 64]
CONTEXTS = [512, 2048, 8192]
IMPLS = ["triton", "eager"]
# The CPU eager rows stay under ~30 s for the whole file: only these (batch, context) run there.
CPU_SIZES = {(1, 512), (8, 512), (1, 2048)}


def _setup(batch, context, dtype, device):
    blocks_per_seq = math.ceil(context / BLOCK_SIZE)
    n_blocks = batch * blocks_per_seq
    k_cache = torch.randn(n_blocks, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device=device, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    # Shuffled physical blocks, as a block manager hands them out after some churn.
    tables = torch.randperm(n_blocks, device=device).to(torch.int32).view(batch, blocks_per_seq)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    q = torch.randn(batch, N_HEADS, HEAD_DIM, device=device, dtype=dtype)
    return q, k_cache, v_cache, tables, lens


def _dense_sdpa(q, k_cache, v_cache, tables, context):
    batch = q.shape[0]
    k = k_cache[tables.long()].reshape(batch, -1, KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2)  # (S, K, L, D)
    v = v_cache[tables.long()].reshape(batch, -1, KV_HEADS, HEAD_DIM)[:, :context].transpose(1, 2)
    return F.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)[:, :, 0]  # (S, H, D)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_paged_decode(run_impl, bench_device, impl, batch, context):
    if bench_device == "cpu":
        if impl == "triton":
            run_impl(impl, None)  # skips with the fixture's reason before allocating GiB-sized caches
        if (batch, context) not in CPU_SIZES:
            pytest.skip("large eager rows run on CUDA only (the CPU file stays under 30 s)")
    dtype = torch.bfloat16 if bench_device == "cuda" else torch.float32
    q, k_cache, v_cache, tables, lens = _setup(batch, context, dtype, bench_device)
    elem = k_cache.element_size()
    bytes_moved = 2 * batch * context * KV_HEADS * HEAD_DIM * elem + 2 * batch * N_HEADS * HEAD_DIM * elem
    if impl == "triton":
        fn = lambda: paged_decode_attention(q, k_cache, v_cache, tables, lens, max_context_len=context)  # noqa: E731
    else:
        fn = lambda: _dense_sdpa(q, k_cache, v_cache, tables, context)  # noqa: E731
    run_impl(impl, fn, bytes_moved=bytes_moved)
