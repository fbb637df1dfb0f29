"""Flash-attention forward for packed variable-length batches, dense or paged K/V.

Legend: B = sequences, T = packed tokens, H = query heads, K = kv heads, D = head dim,
M = query rows of a block, N = key rows of a block, P = rows (slots) per paged-cache block.

One program computes BLOCK_M query rows of one (sequence, head) with the online softmax of
FlashAttention-2: scores are scaled by scale * log2(e) so the exponentials are exp2, the
running max and sum stay fp32, and the (Lq, Lk) score matrix never exists in memory. Causal
programs skip key blocks above the diagonal and split their key loop in two stages, as the
Triton fused-attention tutorial does: blocks every row of the query block sees in full run
without any mask; only the blocks on the diagonal (and the sequence's last, partial block)
pay for masking. With a block table, key rows are gathered through it from a paged cache
(`PAGED` switch of the same kernel).
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

LOG2_E = 1.4426950408889634  # 1/ln(2): exp(x) == exp2(x * LOG2_E)
_ALIGNMENTS = ("bottom_right", "top_left")


@triton.jit
def _load_tile(
    ptrs,  # (R, BLOCK_D) pointers
    rows_ok,  # (R,) bool, row in range
    cols_ok,  # (BLOCK_D,) bool, d < HEAD_DIM
    MASK_ROWS: tl.constexpr,
    MASK_COLS: tl.constexpr,  # BLOCK_D > HEAD_DIM
):
    # Unmasked loads where the bounds are known to hold: the off-diagonal key blocks of the
    # first stage pay for no predicate at all when D is a power of two.
    if MASK_ROWS:
        if MASK_COLS:
            x = tl.load(ptrs, mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=rows_ok[:, None], other=0.0)
    else:
        if MASK_COLS:
            x = tl.load(ptrs, mask=cols_ok[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _attn_fwd_inner(
    acc,  # (BLOCK_M, BLOCK_D) fp32 unnormalised output
    l_i,  # (BLOCK_M,) fp32 running sum of exp2
    m_i,  # (BLOCK_M,) fp32 running max of the log2-scaled scores
    q,  # (BLOCK_M, BLOCK_D) query block, input dtype
    K,  # pointer to kv head kvh of token 0 (dense) or of block 0, slot 0 (paged)
    V,  # same for V
    BT_ROW,  # (max_blocks,) int32 block-table row of this sequence; unused unless PAGED
    q_pos,  # (BLOCK_M,) int32 last key index each query row may see (causal)
    offs_d,  # (BLOCK_D,)
    lo,  # first key of this stage (a multiple of BLOCK_N)
    hi,  # keys of this stage end before hi
    seqlen_k,  # keys of this sequence
    qk_scale,  # fp32 softmax scale * log2(e)
    stride_kt,  # elements between keys (dense) or between slots of a block (paged)
    stride_vt,
    stride_kb,  # elements between cache blocks; unused unless PAGED
    stride_vb,
    MASKED: tl.constexpr,  # this stage needs the key-bound and causal masks
    IS_CAUSAL: tl.constexpr,
    PAGED: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,  # row offsets are multiples of 8 elements
):
    offs_n0 = tl.arange(0, BLOCK_N)
    cols_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + offs_n0
        keys_ok = offs_n < seqlen_k
        # -- locate the key rows (int64: caches and packed batches can pass 2^31 elements) --
        if PAGED:
            if MASKED:
                block = tl.load(BT_ROW + offs_n // PAGE_SIZE, mask=keys_ok, other=0)
            else:
                block = tl.load(BT_ROW + offs_n // PAGE_SIZE)
            slot = offs_n % PAGE_SIZE
            k_rows = block.to(tl.int64) * stride_kb + slot * stride_kt
            v_rows = block.to(tl.int64) * stride_vb + slot * stride_vt
        else:
            k_rows = offs_n.to(tl.int64) * stride_kt
            v_rows = offs_n.to(tl.int64) * stride_vt
        if ALIGNED:
            k_rows, v_rows = tl.multiple_of(k_rows, 8), tl.multiple_of(v_rows, 8)
        k = _load_tile(K + k_rows[:, None] + offs_d[None, :], keys_ok, cols_ok, MASKED, BLOCK_D != HEAD_DIM)
        # -- compute qk: (BLOCK_M, BLOCK_D) @ (BLOCK_D, BLOCK_N), fp32 accumulate --
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            keep = keys_ok[None, :]
            if IS_CAUSAL:
                keep = keep & (offs_n[None, :] <= q_pos[:, None])
            qk = tl.where(keep, qk, float("-inf"))
        # -- online softmax update --
        m_ij = tl.maximum(m_i, tl.max(qk, 1))
        if MASKED:
            # A row that has seen no key yet keeps m = -inf; subtracting 0 instead gives
            # exp2(-inf) = 0 rather than exp2(-inf - -inf) = NaN.
            m_sub = tl.where(m_ij == float("-inf"), 0.0, m_ij)
        else:
            m_sub = m_ij
        p = tl.math.exp2(qk - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_tile(V + v_rows[:, None] + offs_d[None, :], keys_ok, cols_ok, MASKED, BLOCK_D != HEAD_DIM)
        # -- P cast to V's dtype before the second dot, as FlashAttention-2 does --
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_ij
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q,  # (T_q, H, D) queries, unit stride along D
    K,  # (T_k, K, D) keys, or paged cache (num_blocks, P, K, D)
    V,  # same layout as K
    O,  # (T_q, H, D) output, q's dtype
    LSE,  # (H, T_q) fp32 natural-log logsumexp; unused unless STORE_LSE
    CU_Q,  # (B + 1,) int32 cumulative query lengths
    CU_K,  # (B + 1,) int32 cumulative key lengths (paged: context lengths in the cache)
    BLOCK_TABLE,  # (B, max_blocks) int32 cache block of each P keys; unused unless PAGED
    qk_scale,  # fp32 softmax scale * log2(e)
    bottom_right,  # i32 1: causal diagonal at Lk - Lq (chunked prefill), 0: top-left
    group,  # i32 H // K query heads per kv head
    stride_qz,
    stride_qt,
    stride_qh,  # Q: per sequence (0 when packed), per token, per head
    stride_kz,
    stride_kt,
    stride_kh,  # K: per sequence (0 when packed or paged), per token/slot, per head
    stride_vz,
    stride_vt,
    stride_vh,
    stride_oz,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_vb,  # K/V: per cache block; unused unless PAGED
    stride_bt,  # BLOCK_TABLE: per sequence
    stride_lse,  # LSE: per head
    IS_CAUSAL: tl.constexpr,
    PAGED: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    STORE_LSE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,  # next power of two >= HEAD_DIM
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs (no silent TF32), else "tf32" (ignored)
    ALIGNED: tl.constexpr,  # Q/K/V/O 16-byte aligned and every stride a multiple of 8 (launcher-checked)
):
    # Query blocks in reverse: under a causal mask the last blocks of a sequence have the most
    # keys, so launching them first keeps the short ones for the tail of the grid.
    start_m = tl.num_programs(0) - 1 - tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    q_start = tl.load(CU_Q + seq)
    seqlen_q = tl.load(CU_Q + seq + 1) - q_start
    if start_m * BLOCK_M >= seqlen_q:
        return  # grid is sized for the longest sequence; shorter ones have nothing here
    k_start = tl.load(CU_K + seq)
    seqlen_k = tl.load(CU_K + seq + 1) - k_start
    kv_head = head // group

    # Token t of sequence b sits at b * stride_z + (cu[b] + t) * stride_t: packed batches pass
    # stride_z = 0, padded (B, L, ...) batches pass cu = b * L and stride_z = stride_b - L * stride_t.
    Q += seq.to(tl.int64) * stride_qz + q_start.to(tl.int64) * stride_qt + head * stride_qh
    O += seq.to(tl.int64) * stride_oz + q_start.to(tl.int64) * stride_ot + head * stride_oh
    K += kv_head * stride_kh
    V += kv_head * stride_vh
    if PAGED:
        BT_ROW = BLOCK_TABLE + seq.to(tl.int64) * stride_bt
    else:
        BT_ROW = BLOCK_TABLE
        K += seq.to(tl.int64) * stride_kz + k_start.to(tl.int64) * stride_kt
        V += seq.to(tl.int64) * stride_vz + k_start.to(tl.int64) * stride_vt

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows_ok = offs_m < seqlen_q
    cols_ok = offs_d < HEAD_DIM
    q_rows = offs_m.to(tl.int64) * stride_qt
    o_rows = offs_m.to(tl.int64) * stride_ot
    if ALIGNED:
        # Promise what the launcher checked, so row loads become 16-byte vectors and cp.async
        # pipelines even where the compiler cannot see argument values (ahead-of-time builds):
        # without it the sm_80 build of the fp16 D=64 tile issues scalar loads and spills.
        Q, O, K, V = tl.multiple_of(Q, 16), tl.multiple_of(O, 16), tl.multiple_of(K, 16), tl.multiple_of(V, 16)
        q_rows, o_rows = tl.multiple_of(q_rows, 8), tl.multiple_of(o_rows, 8)
    q = tl.load(Q + q_rows[:, None] + offs_d[None, :], mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # -- key ranges: [0, full) is seen in full by every row; [full, hi) needs masks --
    if IS_CAUSAL:
        offset = (seqlen_k - seqlen_q) * bottom_right
        q_pos = offs_m + offset  # query row i sees keys j <= i + offset
        last_row = tl.minimum(start_m * BLOCK_M + BLOCK_M, seqlen_q) - 1
        hi = tl.maximum(tl.minimum(seqlen_k, last_row + offset + 1), 0)
        full = tl.maximum(tl.minimum(seqlen_k, start_m * BLOCK_M + offset + 1), 0) // BLOCK_N * BLOCK_N
    else:
        q_pos = offs_m
        hi = seqlen_k
        full = seqlen_k // BLOCK_N * BLOCK_N
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K,
        V,
        BT_ROW,
        q_pos,
        offs_d,
        0,
        full,
        seqlen_k,
        qk_scale,
        stride_kt,
        stride_vt,
        stride_kb,
        stride_vb,
        False,
        IS_CAUSAL,
        PAGED,
        PAGE_SIZE,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        DOT_PRECISION,
        ALIGNED,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc,
        l_i,
        m_i,
        q,
        K,
        V,
        BT_ROW,
        q_pos,
        offs_d,
        full,
        hi,
        seqlen_k,
        qk_scale,
        stride_kt,
        stride_vt,
        stride_kb,
        stride_vb,
        True,
        IS_CAUSAL,
        PAGED,
        PAGE_SIZE,
        HEAD_DIM,
        BLOCK_N,
        BLOCK_D,
        DOT_PRECISION,
        ALIGNED,
    )

    # -- epilogue: a row that saw no key (l = 0) outputs 0, never 0/0 --
    seen = l_i > 0.0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    tl.store(
        O + o_rows[:, None] + offs_d[None, :], acc.to(O.dtype.element_ty), mask=rows_ok[:, None] & cols_ok[None, :]
    )
    if STORE_LSE:
        ln2 = 0.6931471805599453  # back from log2 to natural log
        lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * ln2, float("-inf"))
        tl.store(LSE + head.to(tl.int64) * stride_lse + q_start + offs_m, lse, mask=rows_ok)


def attention_launch_config(head_dim: int, dtype: torch.dtype) -> dict:
    """Tile sizes, warps and pipeline depth for head dim D and dtype; shared by launcher and aot_configs.

    Every row compiles for sm_80 and sm_90 without spills (python -m fastx.kernels.report).
    NOTE measured with that report: the fp16 128x64 tile at D = 64 needs 255 registers and
    spills at 4 warps, 178 (sm_80) / 127 (sm_90) at 8 warps, so both head dims use 8 warps;
    D = 128 takes 224 / 188.
    fp32 `ieee` dots run on FMA units, which hold whole operand rows per thread: 64x32 at
    D = 128 spills, hence the small fp32 tiles (fp32 is the exactness path, not the fast one).
    """
    block_d = max(next_power_of_2(head_dim), 16)  # tl.dot needs K >= 16
    if dtype == torch.float32:
        if block_d <= 64:
            block_m, block_n, warps, stages = 64, 32, 8, 2
        elif block_d <= 128:
            block_m, block_n, warps, stages = 32, 16, 8, 2
        else:
            block_m, block_n, warps, stages = 16, 16, 4, 2
    elif block_d <= 64 or head_dim == 128:
        block_m, block_n, warps, stages = 128, 64, 8, 3
    elif block_d <= 128:
        # Padded head dims (80, 96): the D masks cost registers; 128x64 spills 32 B at D = 80 on sm_80.
        block_m, block_n, warps, stages = 128, 32, 8, 3
    else:
        block_m, block_n, warps, stages = 64, 32, 8, 2
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps, "num_stages": stages}


def _check_cu_seqlens(name: str, cu: torch.Tensor, batch: int | None, total: int | None, max_seqlen: int) -> None:
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1 or cu.numel() < 1:
        got = f"{cu.dtype} of shape {tuple(cu.shape)}" if isinstance(cu, torch.Tensor) else type(cu).__name__
        raise ValueError(f"{name}: expected a 1-D int32 tensor of shape (B + 1,), got {got}")
    if batch is not None and cu.numel() != batch + 1:
        raise ValueError(f"{name}: expected shape ({batch + 1},) (as cu_seqlens_q), got {tuple(cu.shape)}")
    if not _common.checks_values(cu):
        return
    values = cu.cpu().to(torch.int64)
    if values[0].item() != 0:
        raise ValueError(f"{name}: expected to start at 0, got {values[0].item()}")
    lengths = values[1:] - values[:-1]
    if bool((lengths < 0).any()):
        raise ValueError(f"{name}: expected non-decreasing values, got {values.tolist()}")
    if total is not None and values[-1].item() != total:
        raise ValueError(f"{name}: expected to end at the token count {total}, got {values[-1].item()}")
    longest = int(lengths.max().item()) if lengths.numel() else 0
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen of {name}: expected >= the longest sequence {longest}, got {max_seqlen}")


@on_input_device
def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
    block_table: torch.Tensor | None = None,
    causal_alignment: str = "bottom_right",
    *,
    _batch_strides: tuple[int, int, int, int] | None = None,
    _out: torch.Tensor | None = None,
):
    """softmax(q k^T * scale) v per sequence of a packed batch (flash-attn's varlen layout).

    q: (T_q, H, D); k, v: (T_k, K, D) with H a multiple of K (GQA/MQA: query head h reads kv
    head h // (H // K)); cu_seqlens_q/k: int32 (B + 1,) cumulative lengths starting at 0.
    Returns out (T_q, H, D) in q's dtype, and with return_lse also lse (H, T_q) fp32 (natural
    log). `scale` defaults to 1 / sqrt(D). D may be any size in [16, 256].

    causal: query i of a sequence sees keys j <= i + (Lk - Lq) with "bottom_right" alignment
    (the new tokens of a chunked prefill or of a prompt with a cached prefix), or j <= i with
    "top_left" (torch SDPA's is_causal). A row that sees no key outputs 0 (lse -inf).

    block_table (B, max_blocks) int32: k and v are then paged caches (num_blocks, P, K, D),
    key j of sequence b lives at cache[block_table[b, j // P], j % P], and cu_seqlens_k holds
    the cumulative context lengths in the cache.

    Shapes, dtypes and devices are always checked. Value checks (cu_seqlens start at 0, do not
    decrease and end at the token count; max_seqlen bounds; block-table entries in range and
    long enough for each context) read tensor contents: always done for CPU tensors, on CUDA
    only with FASTX_DEBUG=1 because reading device memory forces a synchronisation.
    """
    paged = block_table is not None
    dense_batch = _batch_strides is not None
    batch = check_varlen_args(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, causal_alignment, dense_batch
    )
    total_q, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[-2]

    # Private (fastx.ops SDPA): per-sequence strides of padded (B, L, ...) tensors viewed as
    # (B * L, ...), and an output view to write into; see the kernel's addressing comment.
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if _out is None else _out
    lse = torch.empty((n_heads, total_q), dtype=torch.float32, device=q.device)
    if total_q == 0 or batch == 0 or n_heads == 0 or max_seqlen_q <= 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return (out, lse) if return_lse else out
    # Kernels index with unit stride along D; any other layout is copied once.
    q = q if q.stride(-1) == 1 else q.contiguous()
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    sz_q, sz_k, sz_v, sz_o = _batch_strides if dense_batch else (0, 0, 0, 0)
    if paged:
        stride_kb, stride_kt, stride_kh = k.stride(0), k.stride(1), k.stride(2)
        stride_vb, stride_vt, stride_vh = v.stride(0), v.stride(1), v.stride(2)
        page_size, bt, stride_bt = k.shape[1], block_table, block_table.stride(0)
    else:
        stride_kb, stride_kt, stride_kh = 0, k.stride(0), k.stride(1)
        stride_vb, stride_vt, stride_vh = 0, v.stride(0), v.stride(1)
        page_size, bt, stride_bt = 1, cu_seqlens_k, 0  # any int32 pointer: never read
    strides = (
        sz_q,
        sz_k,
        sz_v,
        sz_o,
        q.stride(0),
        q.stride(1),
        stride_kt,
        stride_kh,
        stride_vt,
        stride_vh,
        out.stride(0),
        out.stride(1),
        stride_kb,
        stride_vb,
    )
    aligned = all(t.data_ptr() % 16 == 0 for t in (q, k, v, out)) and all(s % 8 == 0 for s in strides)
    cfg = attention_launch_config(head_dim, q.dtype)
    grid = (triton.cdiv(max_seqlen_q, cfg["BLOCK_M"]), batch, n_heads)
    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        out,
        lse,
        cu_seqlens_q,
        cu_seqlens_k,
        bt,
        scale * LOG2_E,
        int(causal_alignment == "bottom_right"),
        n_heads // n_kv_heads,
        sz_q,
        q.stride(0),
        q.stride(1),
        sz_k,
        stride_kt,
        stride_kh,
        sz_v,
        stride_vt,
        stride_vh,
        sz_o,
        out.stride(0),
        out.stride(1),
        stride_kb,
        stride_vb,
        stride_bt,
        lse.stride(0),
        IS_CAUSAL=bool(causal),
        PAGED=paged,
        PAGE_SIZE=page_size,
        STORE_LSE=bool(return_lse),
        HEAD_DIM=head_dim,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        ALIGNED=aligned,
        **cfg,
    )
    return (out, lse) if return_lse else out


def check_varlen_args(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, causal_alignment, dense_batch
) -> int | None:
    """Every check of varlen_attention's arguments (see its docstring); returns the batch size B.

    `dense_batch`: the private padded-batch layout of fastx.ops SDPA, where cu_seqlens do not end
    at the token count.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
    check_same_device(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, block_table=block_table)
    paged = block_table is not None
    kv_dims = 4 if paged else 3
    if q.dim() != 3:
        raise ValueError(f"q: expected 3 dimensions (T_q, H, D), got shape {tuple(q.shape)}")
    layout = "(num_blocks, block_size, K, D)" if paged else "(T_k, K, D)"
    for name, t in (("k", k), ("v", v)):
        if t.dim() != kv_dims:
            raise ValueError(f"{name}: expected {kv_dims} dimensions {layout}, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name}: expected dtype {q.dtype} (the dtype of q), got {t.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected shape {tuple(k.shape)} (the shape of k), got {tuple(v.shape)}")
    total_q, n_heads, head_dim = q.shape
    n_kv_heads = k.shape[-2]
    if k.shape[-1] != head_dim:
        raise ValueError(f"k: expected head dim {head_dim} (the head dim of q), got {k.shape[-1]}")
    if not 16 <= head_dim <= 256:
        raise ValueError(f"q: expected head dim D in [16, 256], got {head_dim}")
    if n_kv_heads == 0 or n_heads % n_kv_heads != 0:
        raise ValueError(f"k: expected a kv head count dividing the {n_heads} query heads, got {n_kv_heads}")
    if causal_alignment not in _ALIGNMENTS:
        raise ValueError(f"causal_alignment: expected one of {_ALIGNMENTS}, got {causal_alignment!r}")
    batch = cu_seqlens_q.numel() - 1 if isinstance(cu_seqlens_q, torch.Tensor) else None
    _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, None, None if dense_batch else total_q, max_seqlen_q)
    _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, batch, None if (paged or dense_batch) else k.shape[0], max_seqlen_k)
    if paged:
        _check_block_table(block_table, batch, k.shape[0], k.shape[1], cu_seqlens_k)
    return batch


def _check_block_table(block_table, batch, num_blocks, page_size, cu_seqlens_k) -> None:
    wrong_batch = batch is not None and block_table.dim() == 2 and block_table.shape[0] != batch
    if block_table.dtype != torch.int32 or block_table.dim() != 2 or wrong_batch:
        raise ValueError(
            f"block_table: expected an int32 tensor of shape ({batch}, max_blocks), "
            f"got {block_table.dtype} of shape {tuple(block_table.shape)}"
        )
    if page_size < 1:
        raise ValueError(f"k: expected a block size >= 1 (dim 1 of the paged cache), got {page_size}")
    if not _common.checks_values(block_table):
        return
    lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).cpu().to(torch.int64)
    capacity = block_table.shape[1] * page_size
    if lengths.numel() and int(lengths.max()) > capacity:
        raise ValueError(
            f"block_table: expected room for the longest context {int(lengths.max())}, "
            f"got {block_table.shape[1]} blocks of {page_size} = {capacity} keys"
        )
    table = block_table.cpu()
    for b, n in enumerate(lengths.tolist()):
        used = table[b, : triton.cdiv(n, page_size)]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= num_blocks):
            raise ValueError(
                f"block_table: expected entries in [0, {num_blocks}) for sequence {b}, got {used.tolist()}"
            )


def aot_configs() -> list[AotConfig]:
    """The launcher for fp16/bf16 at D = 64 and 128, causal or not, dense or paged; bf16 D = 80 and
    256; fp32 D = 64, 128, 256. Two sequences of 256 tokens, q/k/v slices of fused qkv rows as the
    models pass them; paged K/V in 16-token blocks."""
    cases = [
        (dtype, d, causal, paged, False)
        for dtype in (torch.float16, torch.bfloat16)
        for d in (64, 128)
        for causal in (False, True)
        for paged in (False, True)
    ]
    cases += [
        (torch.bfloat16, 80, True, False, True),
        (torch.bfloat16, 256, True, False, False),
        (torch.float32, 64, True, True, True),
        (torch.float32, 128, False, False, False),
        (torch.float32, 256, True, False, False),
    ]
    seqs, length, heads, kv_heads, page = 2, 256, 8, 2, 16
    cu = torch.tensor([0, length, 2 * length], dtype=torch.int32)
    calls = []
    for dtype, head_dim, causal, paged, store_lse in cases:
        qkv = torch.empty(seqs * length, heads + 2 * kv_heads, head_dim, dtype=dtype)
        q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
        table = None
        if paged:
            blocks = seqs * length // page
            k = torch.empty(blocks, page, kv_heads, head_dim, dtype=dtype)
            v = torch.empty_like(k)
            table = torch.arange(blocks, dtype=torch.int32).view(seqs, -1)
        name = str(dtype).removeprefix("torch.")
        note = f"{name} D={head_dim}{' causal' if causal else ''}{' paged' if paged else ''}"
        call = functools.partial(
            varlen_attention, q, k, v, cu, cu, length, length, causal, None, store_lse, block_table=table
        )
        calls.append((note, call))
    return configs_from_launches(calls)
