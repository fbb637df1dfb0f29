"""Paged KV cache (vLLM layout): writing new K/V into cache slots, and decode attention over a block table.

Legend: S = sequences (one new token each), T = tokens written, H = query heads, K = kv heads,
G = H // K query heads per kv head, D = head dim, N = cache blocks, B = tokens per block,
P = context partitions of the split-K pass.

Cache layout: k_cache and v_cache are (N, B, K, D); slot s is block s // B, offset s % B.
`block_tables[i, j]` is the physical block holding tokens [j*B, (j+1)*B) of sequence i.

Decode is flash-decoding: phase 1 (grid S x K x P) walks one partition of a context in tiles
of TILE_N tokens gathered row by row through the block table, with an fp32 online softmax, and
writes partial (max, sum of exp, unnormalised accumulator) per query head to fp32 scratch;
phase 2 (grid S x H) merges the partitions with log-sum-exp rescaling. With one partition
(ONE_PARTITION) phase 1 normalises and writes the output itself and phase 2 is skipped.

The split count P is a launch argument, not a function of the context: each program cuts its
sequence's context into P equal partitions (rounded up to whole tiles) read from CONTEXT_LENS.
The grid and every scalar argument therefore depend only on the batch size and P, so a decode
step can be captured once in a CUDA graph and replayed as contexts grow; and a short context
still spreads over P programs (batch 1 fills the SMs at any length). Nothing inside a program
scales with the context length except the loop count.

NOTE (GQA): one phase-1 program serves all G query heads of its kv head, so each K/V tile is
read from memory once per group. The G rows are padded to BLOCK_G >= 16 and multiplied with
tl.dot rather than broadcast-multiply + tl.sum: the broadcast form materialises a
(G, TILE_N, D) product, 4 x 64 x 128 fp32 = 256 registers per thread at 4 warps (spills),
while the padded dot keeps one (BLOCK_G, D) fp32 accumulator (16 registers per thread) for
any G <= 16. The wasted MMA rows cost nothing measurable: decode is bound by reading K/V.

Value checks (slots, context lengths, block-table entries) read tensor contents: on CPU
tensors they always run; on CUDA they cost a device sync, so they run only with FASTX_DEBUG=1.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from fastx.kernels import _common
from fastx.kernels._common import check_float, check_same_device, next_power_of_2, on_input_device
from fastx.kernels.aot import AotConfig, configs_from_launches

# Splits when neither the caller nor a GPU says: enough to exercise the merge, few enough that
# the interpreter stays quick. On CUDA the default comes from the SM count (splits_for).
DEFAULT_NUM_SPLITS = 4
# No more splits than this: the phase-2 merge reads them all, and past ~2 waves of programs
# more splits only add scratch traffic.
MAX_NUM_SPLITS = 64
# Partitions merged per step of the phase-2 loop (bounds its registers at any context length).
REDUCE_BLOCK_P = 32
LOG2E = 1.4426950408889634  # softmax runs in base 2: exp(x) = exp2(x * log2(e))


@triton.jit
def _write_kv_cache_kernel(
    KEY,  # (T, K, D) new keys, unit last stride
    VALUE,  # (T, K, D) new values, unit last stride
    K_CACHE,  # (N, B, K, D) key cache, written in place
    V_CACHE,  # (N, B, K, D) value cache, same strides as K_CACHE
    SLOT_MAPPING,  # (T,) int32/int64 cache slot of each token; < 0 means padding (skipped)
    stride_kt,  # elements between tokens of KEY
    stride_kh,  # elements between heads of KEY
    stride_vt,  # elements between tokens of VALUE
    stride_vh,  # elements between heads of VALUE
    stride_cb,  # elements between blocks of the caches
    stride_cs,  # elements between slots of a block
    stride_ch,  # elements between heads of a slot
    num_kv_heads,  # K
    head_dim,  # D
    block_size,  # B (runtime: one scalar division per program)
    BLOCK_H: tl.constexpr,  # kv heads copied per program
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    slot = tl.load(SLOT_MAPPING + token).to(tl.int64)
    live = (heads < num_kv_heads) & (heads * 0 + slot >= 0)  # (BLOCK_H,); a negative slot is padding
    mask = live[:, None] & (offs_d < head_dim)[None, :]
    # int64: block * stride_cb passes 2^31 for caches over 2 G elements.
    dst = (
        (slot // block_size) * stride_cb
        + (slot % block_size) * stride_cs
        + heads[:, None] * stride_ch
        + offs_d[None, :]
    )
    k = tl.load(KEY + token * stride_kt + heads[:, None] * stride_kh + offs_d[None, :], mask=mask)
    tl.store(K_CACHE + dst, k, mask=mask)
    v = tl.load(VALUE + token * stride_vt + heads[:, None] * stride_vh + offs_d[None, :], mask=mask)
    tl.store(V_CACHE + dst, v, mask=mask)


@triton.jit
def _partition_len(context_len, num_partitions, TILE_N: tl.constexpr):
    """Tokens per partition of this context: a 1/P share rounded up to whole tiles (>= one tile).

    tiles = ceil(ceil(L / P) / TILE_N) = ceil(L / (P * TILE_N)). A 32-bit integer division by a
    runtime value is a called subroutine on NVIDIA GPUs (on sm_80 its call frame spilled), so the
    quotient is estimated in fp32, within 1 of the truth for L < 2**24, and corrected exactly.
    """
    span = num_partitions * TILE_N
    q = (context_len.to(tl.float32) / span.to(tl.float32)).to(tl.int32)  # floor(L / span), +-1
    r = context_len - q * span
    q = tl.where(r >= span, q + 1, tl.where(r < 0, q - 1, q))  # now exactly floor(L / span)
    tiles = tl.where(context_len - q * span > 0, q + 1, q)
    return tl.maximum(tiles, 1) * TILE_N


@triton.jit
def _paged_decode_partition_kernel(
    Q,  # (S, H, D) queries, unit last stride
    K_CACHE,  # (N, B, K, D) key cache
    V_CACHE,  # (N, B, K, D) value cache, same strides as K_CACHE
    BLOCK_TABLES,  # (S, max_blocks) int32 physical block of each logical block
    CONTEXT_LENS,  # (S,) int32 tokens in each context (the new one included)
    OUT,  # (S, H, D) contiguous output; written only when ONE_PARTITION
    M_PART,  # (S, H, P) fp32 running max (base 2) per partition; unused when ONE_PARTITION
    L_PART,  # (S, H, P) fp32 sum of exp2 per partition; unused when ONE_PARTITION
    ACC_PART,  # (S, H, P, D) fp32 unnormalised sum of p * v per partition; unused when ONE_PARTITION
    qk_scale,  # softmax scale * log2(e)
    stride_qs,  # elements between sequences of Q
    stride_qh,  # elements between heads of Q
    stride_cb,  # elements between blocks of the caches
    stride_cs,  # elements between slots of a block
    stride_ch,  # elements between heads of a slot
    stride_bt,  # elements between rows of BLOCK_TABLES
    num_heads,  # H
    query_group,  # G = H // K
    num_partitions,  # P (the grid's third dimension): splits of every context
    HEAD_DIM: tl.constexpr,  # D (constexpr: the D mask then has known constancy and loads vectorise)
    BLOCK_SIZE: tl.constexpr,  # B, tokens per cache block
    BLOCK_G: tl.constexpr,  # G padded to >= 16 (tl.dot needs M >= 16 on a GPU)
    BLOCK_D: tl.constexpr,  # D padded to a power of two >= 16
    TILE_N: tl.constexpr,  # tokens per loop step, a power of two (rows are gathered one by one, so any B)
    ONE_PARTITION: tl.constexpr,  # P == 1: normalise and write OUT here
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 caches (no TF32), "tf32" is ignored for 16-bit
    ALIGNED: tl.constexpr,  # caches 16-byte aligned with 16-byte-multiple strides (launcher checks)
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    context_len = tl.load(CONTEXT_LENS + seq)
    part_len = _partition_len(context_len, num_partitions, TILE_N)
    start = part * part_len
    end = tl.minimum(start + part_len, context_len)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, TILE_N)
    g_mask = offs_g < query_group
    d_mask = offs_d < HEAD_DIM
    heads = kv_head * query_group + offs_g  # (BLOCK_G,) query heads of this kv head
    q = tl.load(
        Q + seq * stride_qs + heads[:, None] * stride_qh + offs_d[None, :],
        mask=g_mask[:, None] & d_mask[None, :],
        other=0.0,
    )  # (BLOCK_G, BLOCK_D); padded rows are zero and masked at the store

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    table_row = BLOCK_TABLES + seq * stride_bt
    for tile_start in range(start, end, TILE_N):
        # -- gather TILE_N cache rows through the block table --
        pos = tile_start + offs_n  # (TILE_N,) token positions in the context
        n_mask = pos < end
        block_ids = tl.load(table_row + pos // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
        rows = block_ids * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch  # (TILE_N,) int64
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k_ptrs = K_CACHE + rows[:, None] + offs_d[None, :]  # (TILE_N, BLOCK_D)
        v_ptrs = V_CACHE + rows[:, None] + offs_d[None, :]
        if ALIGNED:
            # Row starts are 16-byte aligned: 16-byte vector loads. Triton's JIT infers this from
            # its divisible-by-16 argument specialisation; the AOT compile has no such
            # specialisation, and without the hint it sees scalar loads (255 registers, spills).
            k_ptrs = tl.multiple_of(k_ptrs, [16, 16])
            v_ptrs = tl.multiple_of(v_ptrs, [16, 16])
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        # -- logits (BLOCK_G, TILE_N) in fp32, base 2 --
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        # -- online softmax: the first tile of a partition always holds a real token, so m_new is finite --
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)  # (TILE_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out_mask = g_mask[:, None] & d_mask[None, :]
    if ONE_PARTITION:
        # An empty context (length 0) has l_i == 0 and acc == 0: its output is zeros.
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out_ptrs = OUT + (seq * num_heads + heads)[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=out_mask)
    else:
        # Partitions past the end of this context write nothing; phase 2 never reads them.
        live = g_mask & (start + offs_g * 0 < context_len)  # (BLOCK_G,)
        idx = (seq * num_heads + heads) * num_partitions + part  # (BLOCK_G,) int64
        tl.store(M_PART + idx, m_i, mask=live)
        tl.store(L_PART + idx, l_i, mask=live)
        tl.store(ACC_PART + idx[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=live[:, None] & d_mask[None, :])


@triton.jit
def _paged_decode_reduce_kernel(
    OUT,  # (S, H, D) contiguous output
    CONTEXT_LENS,  # (S,) int32
    M_PART,  # (S, H, P) fp32 per-partition max (base 2)
    L_PART,  # (S, H, P) fp32 per-partition sum of exp2
    ACC_PART,  # (S, H, P, D) fp32 per-partition unnormalised accumulator
    num_heads,  # H
    head_dim,  # D
    num_partitions,  # P
    TILE_N: tl.constexpr,  # phase 1's tile (partitions are whole tiles: to count this context's)
    BLOCK_P: tl.constexpr,  # partitions merged per loop step
    BLOCK_D: tl.constexpr,  # D padded to a power of two
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    context_len = tl.load(CONTEXT_LENS + seq)
    part_len = _partition_len(context_len, num_partitions, TILE_N)
    # Partition p is live when it starts inside the context (a product, not a runtime division).
    # An empty context runs no step: its output is zeros. Past the first step, a step with no live
    # partition leaves the running max finite (partition 0 is live), so it changes nothing.
    n_steps = tl.where(context_len > 0, num_partitions, 0)
    row = (seq * num_heads + head) * num_partitions  # int64 offset of partition 0 of this (seq, head)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim

    m_run = tl.full([], float("-inf"), dtype=tl.float32)
    l_run = tl.zeros([], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for p0 in range(0, n_steps, BLOCK_P):
        p_mask = ((p0 + offs_p) * part_len < context_len) & (p0 + offs_p < num_partitions)
        m = tl.load(M_PART + row + p0 + offs_p, mask=p_mask, other=float("-inf"))  # (BLOCK_P,)
        l = tl.load(L_PART + row + p0 + offs_p, mask=p_mask, other=0.0)
        a = tl.load(
            ACC_PART + (row + p0 + offs_p)[:, None] * head_dim + offs_d[None, :],
            mask=p_mask[:, None] & d_mask[None, :],
            other=0.0,
        )  # (BLOCK_P, BLOCK_D)
        # -- log-sum-exp merge: every live partition has a finite max, so m_new is finite --
        m_new = tl.maximum(m_run, tl.max(m, axis=0))
        alpha = tl.math.exp2(m_run - m_new)
        w = tl.math.exp2(m - m_new)  # (BLOCK_P,), 0 for masked partitions
        l_run = l_run * alpha + tl.sum(w * l, axis=0)
        acc = acc * alpha + tl.sum(w[:, None] * a, axis=0)
        m_run = m_new

    out = acc / tl.where(l_run > 0, l_run, 1.0)  # empty context: zeros
    tl.store(OUT + (seq * num_heads + head) * head_dim + offs_d, out.to(OUT.dtype.element_ty), mask=d_mask)


# ----------------------------------------------------------------------------- launch configs


def write_launch_config(num_kv_heads: int, head_dim: int) -> dict:
    """Heads per program and padded head dim of the cache write; shared with aot_configs."""
    block_d = next_power_of_2(head_dim)
    # Up to 2048 elements per tensor per program: 16 per thread at 4 warps.
    block_h = max(1, min(next_power_of_2(num_kv_heads), 2048 // block_d))
    return {"BLOCK_H": block_h, "BLOCK_D": block_d, "num_warps": 4}


def decode_launch_config(head_dim: int, block_size: int, dtype: torch.dtype, group_size: int) -> dict:
    """Tile, partition and warps of the decode kernels per (D, B, dtype, G); shared with aot_configs."""
    block_d = max(16, next_power_of_2(head_dim))
    elem = torch.finfo(dtype).bits // 8
    # A K tile and a V tile of TILE_N x BLOCK_D stay within 32 KiB together: 64 tokens of a
    # 16-bit D=128 head, 32 tokens for fp32 or D=256 (keeps sm_80/sm_90 free of spills).
    tile_n = max(16, min(64, 32 * 1024 // (2 * block_d * elem)))
    tile_n = max(tile_n, next_power_of_2(block_size))  # one tile never splits a block
    return {
        "BLOCK_G": max(16, next_power_of_2(group_size)),
        "BLOCK_D": block_d,
        "TILE_N": tile_n,
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        # 8 warps once a K tile reaches 16 KiB: 4 warps spill the fp32 D=128 tile on sm_90 (report).
        "num_warps": 8 if tile_n * block_d * elem >= 16 * 1024 else 4,
        "num_stages": 2,
    }


def splits_for(n_seqs: int, kv_heads: int, tile_n: int, num_sms: int | None, max_context_len: int | None) -> int:
    """Phase-1 splits per context so that (sequences x kv heads x splits) programs fill the GPU.

    Without a split, batch 1 of a model with 3-8 KV heads launches 3-8 programs on a 132-SM GPU.
    The count depends on the batch and the device (DEFAULT_NUM_SPLITS without a GPU), and on a
    context bound only when one is given: a bound fixed for the engine's life (its longest
    sequence) keeps the grid fixed; no more splits than tiles in that bound.
    """
    wanted = DEFAULT_NUM_SPLITS if num_sms is None else -(-num_sms // max(1, n_seqs * kv_heads))
    if max_context_len is not None:
        wanted = min(wanted, -(-max_context_len // tile_n))
    return max(1, min(wanted, MAX_NUM_SPLITS))


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _aligned_16b(*caches: torch.Tensor) -> bool:
    """Every cache row starts on a 16-byte boundary (host metadata only: no sync)."""
    elem = caches[0].element_size()
    return all(c.data_ptr() % 16 == 0 and all(st * elem % 16 == 0 for st in c.stride()[:3]) for c in caches)


# ----------------------------------------------------------------------------- validation


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor, dtype: torch.dtype, kv_heads: int | None, head_dim: int):
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_float(name, c)
        if c.dim() != 4:
            raise ValueError(
                f"{name}: expected 4 dimensions (num_blocks, block_size, kv_heads, head_dim), got shape "
                f"{tuple(c.shape)}"
            )
        if c.dtype != dtype:
            raise ValueError(f"{name}: expected dtype {dtype}, got {c.dtype}")
        if c.stride(-1) != 1:
            raise ValueError(
                f"{name}: expected unit stride along head_dim (written/read in place), got strides {c.stride()}"
            )
    if (kv_heads is not None and k_cache.shape[2] != kv_heads) or k_cache.shape[3] != head_dim:
        want = f"(num_blocks, block_size, {kv_heads if kv_heads is not None else 'K'}, {head_dim})"
        raise ValueError(f"k_cache: expected shape {want}, got {tuple(k_cache.shape)}")
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError(
            f"v_cache: expected shape {tuple(k_cache.shape)} and strides {k_cache.stride()} (k_cache's), got "
            f"{tuple(v_cache.shape)} and {v_cache.stride()}"
        )


def check_write_args(key, value, k_cache, v_cache, slot_mapping) -> None:
    """Validate write_kv_cache's arguments (shared with the eager op)."""
    check_float("key", key)
    if key.dim() != 3:
        raise ValueError(f"key: expected 3 dimensions (tokens, kv_heads, head_dim), got shape {tuple(key.shape)}")
    if not isinstance(value, torch.Tensor) or value.shape != key.shape or value.dtype != key.dtype:
        got = f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"value: expected shape {tuple(key.shape)} and dtype {key.dtype} (key's), got {got}")
    _check_cache(k_cache, v_cache, key.dtype, key.shape[1], key.shape[2])
    if slot_mapping.dtype not in (torch.int32, torch.int64) or slot_mapping.shape != (key.shape[0],):
        raise ValueError(
            f"slot_mapping: expected shape ({key.shape[0]},) of int32/int64, got {tuple(slot_mapping.shape)} "
            f"{slot_mapping.dtype}"
        )
    check_same_device(key=key, value=value, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    if _common.checks_values(slot_mapping) and slot_mapping.numel() and int(slot_mapping.max()) >= num_slots:
        raise ValueError(
            f"slot_mapping: expected slots < num_blocks * block_size = {num_slots}, got {int(slot_mapping.max())}"
        )


def check_decode_args(q, k_cache, v_cache, block_tables, context_lens, max_context_len, num_splits) -> None:
    """Validate paged_decode_attention's arguments (shared with the eager op)."""
    check_float("q", q)
    if q.dim() != 3:
        raise ValueError(f"q: expected 3 dimensions (seqs, heads, head_dim), got shape {tuple(q.shape)}")
    n_seqs, n_heads, head_dim = q.shape
    _check_cache(k_cache, v_cache, q.dtype, None, head_dim)
    n_blocks, block_size, kv_heads, _ = k_cache.shape
    if kv_heads == 0 or n_heads % kv_heads:
        raise ValueError(f"q: expected a head count divisible by the cache's {kv_heads} kv heads, got {n_heads}")
    if block_tables.dtype != torch.int32 or block_tables.dim() != 2 or block_tables.shape[0] != n_seqs:
        raise ValueError(
            f"block_tables: expected shape ({n_seqs}, max_blocks) of int32, got {tuple(block_tables.shape)} "
            f"{block_tables.dtype}"
        )
    if context_lens.dtype != torch.int32 or context_lens.shape != (n_seqs,):
        raise ValueError(
            f"context_lens: expected shape ({n_seqs},) of int32, got {tuple(context_lens.shape)} {context_lens.dtype}"
        )
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, context_lens=context_lens)
    if num_splits is not None and not (isinstance(num_splits, int) and 1 <= num_splits <= MAX_NUM_SPLITS):
        raise ValueError(f"num_splits: expected an integer in [1, {MAX_NUM_SPLITS}], got {num_splits!r}")
    if not _common.checks_values(context_lens) or n_seqs == 0:
        return
    capacity = block_tables.shape[1] * block_size
    longest = int(context_lens.max())
    if int(context_lens.min()) < 0 or longest > capacity:
        raise ValueError(
            f"context_lens: expected values in [0, max_blocks * block_size = {capacity}], got "
            f"[{int(context_lens.min())}, {longest}]"
        )
    if max_context_len is not None and max_context_len < longest:
        raise ValueError(f"max_context_len: expected >= the longest context {longest}, got {max_context_len}")
    used = torch.arange(block_tables.shape[1], device=block_tables.device)[None, :] * block_size < context_lens[:, None]
    entries = block_tables[used]
    if entries.numel() and (int(entries.min()) < 0 or int(entries.max()) >= n_blocks):
        raise ValueError(
            f"block_tables: expected used entries in [0, {n_blocks}), got [{int(entries.min())}, {int(entries.max())}]"
        )


# ----------------------------------------------------------------------------- launchers


@on_input_device
def write_kv_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    """Write key[t] / value[t] (T, K, D) into k_cache / v_cache (N, B, K, D) at slot slot_mapping[t], in place.

    key and value may be strided views (e.g. slices of a fused qkv projection) as long as
    head_dim has unit stride; otherwise they are copied once. A negative slot is padding and is
    skipped. Slots >= N * B raise ValueError: always for CPU tensors, on CUDA only with
    FASTX_DEBUG=1 (checking the values costs a device sync).
    """
    check_write_args(key, value, k_cache, v_cache, slot_mapping)
    n_tokens, kv_heads, head_dim = key.shape
    if n_tokens == 0 or kv_heads == 0 or head_dim == 0:
        return
    key = key if key.stride(-1) == 1 else key.contiguous()
    value = value if value.stride(-1) == 1 else value.contiguous()
    cfg = write_launch_config(kv_heads, head_dim)
    grid = (n_tokens, triton.cdiv(kv_heads, cfg["BLOCK_H"]))
    _write_kv_cache_kernel[grid](
        key,
        value,
        k_cache,
        v_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        kv_heads,
        head_dim,
        k_cache.shape[1],
        BLOCK_H=cfg["BLOCK_H"],
        BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"],
    )


@on_input_device
def paged_decode_attention(
    q, k_cache, v_cache, block_tables, context_lens, scale=None, max_context_len=None, num_splits=None
) -> torch.Tensor:
    """Attention of one new query token per sequence over its paged context; returns (S, H, D) in q's dtype.

    q: (S, H, D); k_cache, v_cache: (N, B, K, D) with H % K == 0 (GQA); block_tables: (S,
    max_blocks) int32; context_lens: (S,) int32, counting the new token (whose K/V must already
    be in the cache). scale defaults to 1/sqrt(D). A context of length 0 gives zeros.
    `num_splits` (1..MAX_NUM_SPLITS) is how many programs share each (sequence, kv head); by
    default splits_for(...) sizes it to the GPU's SMs, capped by `max_context_len` (a host int
    >= every context length) when given. The grid and the scalar arguments depend on S and the
    split count only, never on the contexts (CUDA-graph capture relies on it). Value checks
    (context lengths within max_blocks * B, used block-table entries within [0, N)) run on CPU
    tensors always and on CUDA only with FASTX_DEBUG=1.
    """
    check_decode_args(q, k_cache, v_cache, block_tables, context_lens, max_context_len, num_splits)
    n_seqs, n_heads, head_dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    out = torch.empty((n_seqs, n_heads, head_dim), dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    q = q if q.stride(-1) == 1 else q.contiguous()
    group = n_heads // kv_heads

    cfg = decode_launch_config(head_dim, block_size, q.dtype, group)
    if num_splits is None:
        sms = _sm_count(q.device) if q.is_cuda else None
        num_splits = splits_for(n_seqs, kv_heads, cfg["TILE_N"], sms, max_context_len)
    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    num_partitions = num_splits
    one_partition = num_partitions == 1
    if one_partition:
        m_part = l_part = acc_part = out  # unused by the ONE_PARTITION kernel
    else:
        m_part = torch.empty((n_seqs, n_heads, num_partitions), dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty((n_seqs, n_heads, num_partitions, head_dim), dtype=torch.float32, device=q.device)
    _paged_decode_partition_kernel[(n_seqs, kv_heads, num_partitions)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        m_part,
        l_part,
        acc_part,
        scale * LOG2E,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        n_heads,
        group,
        num_partitions,
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        ONE_PARTITION=one_partition,
        ALIGNED=_aligned_16b(k_cache, v_cache),
        num_warps=num_warps,
        num_stages=num_stages,
        **cfg,
    )
    if not one_partition:
        _paged_decode_reduce_kernel[(n_seqs, n_heads)](
            out,
            context_lens,
            m_part,
            l_part,
            acc_part,
            n_heads,
            head_dim,
            num_partitions,
            TILE_N=cfg["TILE_N"],
            BLOCK_P=REDUCE_BLOCK_P,
            BLOCK_D=cfg["BLOCK_D"],
        )
    return out


# ----------------------------------------------------------------------------- AOT report


def aot_configs() -> list[AotConfig]:
    """The launchers for Llama-style D=128 (G=4) and D=64 (G=1) caches, blocks of 8/16/32, every dtype,
    one split and several: the cache write from fused qkv rows, decode from its q slice."""
    calls = []
    for dtype, kv_heads, head_dim in [(torch.bfloat16, 8, 128), (torch.float32, 4, 64)]:
        qkv = torch.empty(16, 6 * kv_heads, head_dim, dtype=dtype)  # 4 query heads per kv head
        key, value = qkv[:, 4 * kv_heads : 5 * kv_heads], qkv[:, 5 * kv_heads :]
        cache = torch.empty(32, 16, kv_heads, head_dim, dtype=dtype)
        slots = torch.arange(16, dtype=torch.int64)
        note = f"write {str(dtype).removeprefix('torch.')} K={kv_heads} D={head_dim}"
        calls.append((note, functools.partial(write_kv_cache, key, value, cache, cache.clone(), slots)))
    # (dtype, D, B, G, splits)
    cases = [
        (torch.bfloat16, 128, 16, 4, 8),
        (torch.bfloat16, 128, 16, 4, 1),
        (torch.float16, 128, 16, 1, 8),
        (torch.bfloat16, 64, 8, 4, 8),
        (torch.float16, 64, 32, 1, 1),
        (torch.float32, 128, 16, 4, 8),
        (torch.float32, 64, 16, 1, 1),
        (torch.bfloat16, 256, 16, 8, 8),
    ]
    n_seqs, kv_heads, max_blocks = 4, 2, 64
    for dtype, head_dim, block_size, group, splits in cases:
        heads = group * kv_heads
        q = torch.empty(n_seqs, heads + 2 * kv_heads, head_dim, dtype=dtype)[:, :heads]
        cache = torch.empty(n_seqs * max_blocks, block_size, kv_heads, head_dim, dtype=dtype)
        tables = torch.zeros(n_seqs, max_blocks, dtype=torch.int32)
        lens = torch.zeros(n_seqs, dtype=torch.int32)
        note = f"decode {str(dtype).removeprefix('torch.')} D={head_dim} B={block_size} G={group} P={splits}"
        call = functools.partial(paged_decode_attention, q, cache, cache.clone(), tables, lens, num_splits=splits)
        calls.append((note, call))
    return configs_from_launches(calls)
