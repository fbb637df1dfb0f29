"""x @ W.T with W stored as GGUF quantized blocks, dequantized in registers inside the matmul loop.

Legend: M = rows of x (tokens), N = out_features, K = in_features, QK = elements per GGUF block,
BPB = bytes per block, S = K splits of the decode kernel.

Storage: `qweight` is uint8 (N, K // QK * BPB); row n holds the blocks of W[n, :] in order,
byte for byte as in the GGUF file (llama.cpp's block_q4_0 ... block_q6_K, ggml-common.h).
fp16 scales inside a block are read as two bytes and bitcast; every other field is a byte.

Two kernels share one dequantizer (`_dequant_tile`, FMT a constexpr switch):
- `_quant_gemm_kernel` (prefill, M > GEMV_MAX_ROWS): one program per (BLOCK_M, BLOCK_N) output
  tile walks K in BLOCK_K steps, dequantizes the (BLOCK_K, BLOCK_N) slice of W.T in registers and
  accumulates tl.dot in fp32.
- `_quant_gemv_kernel` (decode, M <= GEMV_MAX_ROWS): programs over N tiles x S splits of K, so a
  batch-1 product with few output tiles still spreads over the GPU; each writes an fp32 partial
  (S, M, N) that `_splitk_reduce_kernel` sums in a second pass (no atomics: the result does not
  depend on the order programs finish). With S = 1 the partial pass writes the output directly.

NOTE (grouped dequantization): the dequantizer builds each tile as (groups, GROUP, BLOCK_N), where
a group is the run of elements sharing one scale (a 32-element block, a K-quant sub-block, Q6_K's
16). Scales and mins are loaded and decoded once per (group, row) and broadcast over the group;
quant bytes are gathered per element (a byte holding two nibbles is read twice, from L1, so DRAM
traffic stays one read of the weight) and a group's bytes are contiguous, so they vectorise where
the block layout is aligned (Q4_K/Q5_K: 128-bit loads). The first version addressed every field
per element: compiled for sm_90 (bf16, 8 warps) its Q4_K GEMM took 212 registers and its Q4_K
decode kernel had 129 ld.global instructions in the PTX; grouped, 63 registers and 9 ld.global.
Any BLOCK_K that is a multiple of GROUP works, and K need only be a multiple of QK (the tail step
is masked).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastx.kernels._common import as_rows, check_float, check_same_device, check_same_dtype, on_input_device
from fastx.kernels.aot import AotConfig, configs_from_launches

# name -> (QK elements per block, bytes per block); sizes of llama.cpp's block_* structs.
GGUF_BLOCK_FORMATS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 18),  # fp16 d; 16 bytes of 4-bit quants
    "Q4_1": (32, 20),  # fp16 d, fp16 m; 16 bytes of 4-bit quants
    "Q5_0": (32, 22),  # fp16 d; 4 bytes of high bits; 16 bytes of low nibbles
    "Q5_1": (32, 24),  # fp16 d, fp16 m; 4 bytes of high bits; 16 bytes of low nibbles
    "Q8_0": (32, 34),  # fp16 d; 32 int8 quants
    "Q4_K": (256, 144),  # fp16 d, fp16 dmin; 12 bytes of 6-bit scales/mins; 128 bytes of nibbles
    "Q5_K": (256, 176),  # as Q4_K plus 32 bytes of high bits (before the nibbles)
    "Q6_K": (256, 210),  # 128 bytes low nibbles; 64 bytes high 2-bit pairs; 16 int8 scales; fp16 d
}

# Elements that share one scale (and min): a whole block, a K-quant sub-block, Q6_K's groups of 16.
GGUF_SCALE_GROUP = {name: 32 for name in GGUF_BLOCK_FORMATS} | {"Q6_K": 16}

# Up to this many rows of x take the split-K decode kernel (one BLOCK_M = 16 tile: the smallest
# M a tensor-core dot takes); larger M takes the tiled GEMM.
GEMV_MAX_ROWS = 16
# Without a GPU (the interpreter, the compile report) splits are sized as for a device of
# CPU_PROGRAMS / 2 SMs: small products split (exercising the two-pass reduction), wide ones not.
CPU_PROGRAMS = 8
MAX_NUM_SPLITS = 32


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _load_fp16(ptr, mask):
    """The little-endian fp16 at byte address `ptr` (any alignment) as fp32."""
    lo = tl.load(ptr, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(ptr + 1, mask=mask, other=0).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _load_byte(ptr, mask):
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _k_scale_min(sb, s, mask):
    """The 6-bit scale and min of sub-block s (0..7) from Q4_K/Q5_K's 12 packed bytes at `sb`.

    Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same
    for mins; bytes 8-11 the low nibbles of scale 4-7 (low) and min 4-7 (high): get_scale_min_k4.
    """
    low = s < 4
    b_s = _load_byte(sb + s, mask)  # s < 4: scale byte; s >= 4: min byte of s - 4
    b_s4 = _load_byte(sb + s + 4, mask)  # s < 4: min byte; s >= 4: the shared low-nibble byte
    b_sm4 = _load_byte(sb + tl.where(low, s, s - 4), mask)  # s >= 4: scale byte of s - 4
    scale = tl.where(low, b_s & 63, (b_s4 & 15) | ((b_sm4 >> 6) << 4))
    minimum = tl.where(low, b_s4 & 63, (b_s4 >> 4) | ((b_s >> 6) << 4))
    return scale.to(tl.float32), minimum.to(tl.float32)


@triton.jit
def _dequant_tile(
    W,  # uint8 base pointer of qweight
    row_start,  # (1, 1, BLOCK_N) int64 byte offset of each output row
    k0,  # first element of the tile along K, a multiple of BLOCK_K
    k_end,  # elements past k_end read as 0 (K, or the end of a split)
    n_mask,  # (1, 1, BLOCK_N) rows in bounds
    FMT: tl.constexpr,
    QK: tl.constexpr,
    BPB: tl.constexpr,
    GROUP: tl.constexpr,  # elements sharing one scale: 32, or 16 for Q6_K
    BLOCK_K: tl.constexpr,  # a multiple of GROUP
):
    """The (BLOCK_K, BLOCK_N) tile of W.T at elements [k0, k0 + BLOCK_K) of rows row_start, in fp32.

    Built as (BLOCK_K // GROUP, GROUP, BLOCK_N): scales are loaded once per (group, row) and
    broadcast over the group, quant bits once per element; the last step flattens the groups.
    """
    kg = k0 + tl.arange(0, BLOCK_K // GROUP)[:, None, None] * GROUP  # (G, 1, 1) first element of each group
    i = tl.arange(0, GROUP)[None, :, None]  # (1, GROUP, 1) position inside the group
    g_mask = (kg < k_end) & n_mask  # (G, 1, BLOCK_N); K is a multiple of QK, so groups are whole
    q_mask = g_mask & (i < GROUP)  # (G, GROUP, BLOCK_N)
    base = W + row_start + (kg // QK) * BPB  # (G, 1, BLOCK_N) start of each group's block
    jg = kg % QK  # (G, 1, 1) the group's first position inside its block
    if FMT == "Q4_0" or FMT == "Q4_1" or FMT == "Q5_0" or FMT == "Q5_1":
        # -- 32-element blocks (one group): element i is the low nibble of byte i (i < 16), else
        # the high nibble of byte i - 16
        if FMT == "Q4_0":
            QS = 2  # byte offset of the nibbles: after d
        elif FMT == "Q4_1":
            QS = 4  # after d, m
        elif FMT == "Q5_0":
            QS = 6  # after d, qh
        else:
            QS = 8  # after d, m, qh
        q = (_load_byte(base + QS + (i % 16), q_mask) >> ((i // 16) * 4)) & 15
        if FMT == "Q5_0" or FMT == "Q5_1":
            # bit i of the little-endian uint32 qh (4 bytes just before the nibbles) is bit 4
            high = (_load_byte(base + (QS - 4) + i // 8, q_mask) >> (i % 8)) & 1
            q = q | (high << 4)
        d = _load_fp16(base, g_mask)
        if FMT == "Q4_0":
            w = d * (q - 8).to(tl.float32)
        elif FMT == "Q5_0":
            w = d * (q - 16).to(tl.float32)
        else:  # Q4_1, Q5_1: d * q + m
            w = d * q.to(tl.float32) + _load_fp16(base + 2, g_mask)
    elif FMT == "Q8_0":
        q = tl.load(base + 2 + i, mask=q_mask, other=0).to(tl.int8, bitcast=True)
        w = _load_fp16(base, g_mask) * q.to(tl.float32)
    elif FMT == "Q4_K" or FMT == "Q5_K":
        # -- 256-element super-block of 8 sub-blocks (groups) of 32: nibbles in 4 chunks of 32
        # bytes, chunk c holds sub-block 2c in its low and 2c + 1 in its high nibbles
        if FMT == "Q4_K":
            QS = 16  # after d, dmin, 12 scale bytes
        else:
            QS = 48  # after d, dmin, 12 scale bytes, 32 high-bit bytes
        s = jg // 32  # (G, 1, 1) sub-block
        q = (_load_byte(base + QS + (jg // 64) * 32 + i, q_mask) >> ((s % 2) * 4)) & 15
        if FMT == "Q5_K":
            # 32 bytes of high bits: bit s of byte i belongs to sub-block s
            q = q | (((_load_byte(base + 16 + i, q_mask) >> s) & 1) << 4)
        scale, minimum = _k_scale_min(base + 4, s, g_mask)
        d_scale = _load_fp16(base, g_mask) * scale  # (G, 1, BLOCK_N)
        d_min = _load_fp16(base + 2, g_mask) * minimum
        w = d_scale * q.to(tl.float32) - d_min
    else:
        tl.static_assert(FMT == "Q6_K", "unknown GGUF block format")
        # -- 256 elements in two halves of 128: low nibbles from 64 bytes (elements l and l + 64
        # share byte l), 2 high bits from 32 bytes (elements l, +32, +64, +96 share byte l);
        # one int8 scale per group of 16
        j = jg + i  # (G, GROUP, 1)
        half = j // 128
        r = j % 128
        low = (_load_byte(base + half * 64 + r % 64, q_mask) >> ((r // 64) * 4)) & 15
        high = (_load_byte(base + 128 + half * 32 + r % 32, q_mask) >> ((r // 32) * 2)) & 3
        q = (low | (high << 4)) - 32
        scale = tl.load(base + 192 + jg // 16, mask=g_mask, other=0).to(tl.int8, bitcast=True)
        w = (_load_fp16(base + 208, g_mask) * scale.to(tl.float32)) * q.to(tl.float32)
    return tl.reshape(w, (BLOCK_K, w.shape[2]))  # (G, GROUP, BLOCK_N) -> (BLOCK_K, BLOCK_N)


@triton.jit
def _quant_gemm_kernel(
    X,  # (M, K) activations, unit stride along K
    W,  # (N, K // QK * BPB) uint8 GGUF blocks, contiguous
    BIAS,  # (N,) in X's dtype, or X when HAS_BIAS is False
    OUT,  # (M, N) in X's dtype, contiguous
    M,
    N,
    K,
    stride_xm,  # elements between rows of X
    row_bytes,  # bytes per row of W: K // QK * BPB
    FMT: tl.constexpr,  # "Q4_0" ... "Q6_K"
    QK: tl.constexpr,
    BPB: tl.constexpr,
    GROUP: tl.constexpr,  # elements per scale (GGUF_SCALE_GROUP[FMT])
    HAS_BIAS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 x (no TF32), else the half-precision MMA
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = X + offs_m.to(tl.int64)[:, None] * stride_xm  # (BLOCK_M, 1)
    row_start = offs_n.to(tl.int64)[None, None, :] * row_bytes  # (1, 1, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < K
        x = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        # -- dequantize the (BLOCK_K, BLOCK_N) slice of W.T in registers --
        w = _dequant_tile(W, row_start, k0, K, n_mask[None, None, :], FMT, QK, BPB, GROUP, BLOCK_K)
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N) fp32
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = OUT + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _quant_gemv_kernel(
    X,  # (M, K) activations, M <= BLOCK_M, unit stride along K
    W,  # (N, K // QK * BPB) uint8 GGUF blocks, contiguous
    BIAS,  # (N,) in X's dtype (read only when ONE_SPLIT and HAS_BIAS)
    OUT,  # (M, N) in X's dtype (written only when ONE_SPLIT)
    PARTIAL,  # (S, M, N) fp32 per-split sums (written unless ONE_SPLIT)
    M,
    N,
    K,
    stride_xm,  # elements between rows of X
    row_bytes,  # bytes per row of W: K // QK * BPB
    k_per_split,  # elements of K per split, a multiple of BLOCK_K
    FMT: tl.constexpr,
    QK: tl.constexpr,
    BPB: tl.constexpr,
    GROUP: tl.constexpr,  # elements per scale (GGUF_SCALE_GROUP[FMT])
    HAS_BIAS: tl.constexpr,
    ONE_SPLIT: tl.constexpr,  # S == 1: finish (bias, cast, store) here, no reduce pass
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # >= M, >= 16 (tensor-core dot); padded rows read as 0
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = X + offs_m.to(tl.int64)[:, None] * stride_xm
    row_start = offs_n.to(tl.int64)[None, None, :] * row_bytes
    k_begin = pid_s * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < k_end
        x = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        # -- the decode product is bound by reading W: each byte of it is loaded once per program --
        w = _dequant_tile(W, row_start, k0, k_end, n_mask[None, None, :], FMT, QK, BPB, GROUP, BLOCK_K)
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=DOT_PRECISION)
    out_mask = m_mask[:, None] & n_mask[None, :]
    if ONE_SPLIT:
        if HAS_BIAS:
            acc += tl.load(BIAS + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(OUT + offs_m[:, None] * N + offs_n[None, :], acc.to(OUT.dtype.element_ty), mask=out_mask)
    else:
        part = PARTIAL + (pid_s * M).to(tl.int64) * N
        tl.store(part + offs_m[:, None] * N + offs_n[None, :], acc, mask=out_mask)


@triton.jit
def _splitk_reduce_kernel(
    PARTIAL,  # (S, M, N) fp32 per-split sums
    BIAS,  # (N,) in OUT's dtype, or PARTIAL when HAS_BIAS is False
    OUT,  # (M, N), contiguous
    M,
    N,
    num_splits,  # S
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for s in range(num_splits):  # fixed order: the sum does not depend on scheduling
        acc += tl.load(PARTIAL + (s * M + row).to(tl.int64) * N + offs_n, mask=n_mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    tl.store(OUT + row.to(tl.int64) * N + offs_n, acc.to(OUT.dtype.element_ty), mask=n_mask)


# ----------------------------------------------------------------------------- launch configs


def gemm_launch_config(fmt: str, dtype: torch.dtype) -> dict:
    """Tile sizes and warps of the prefill GEMM per (format, activation dtype); shared with aot_configs.

    NOTE (compile report): 8 warps, no software pipelining. At 4 warps and 2 stages the fp32
    decode and GEMM tiles spill (Q6_K fp32 decode: 368 bytes on sm_90, Q5_0 fp32 GEMM: 16) and
    half-precision GEMM tiles reach 228 registers on sm_80; at 8 warps and 1 stage every format
    and dtype compiles without spills, at most ~200 registers (fp32 Q5_0), ~120 in fp16/bf16.
    fp32 (IEEE FMA dots, no tensor cores) uses a 32x64x32 tile.
    """
    if dtype == torch.float32:
        return {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 8, "num_stages": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 1}


def gemv_launch_config(fmt: str, dtype: torch.dtype) -> dict:
    """Tile sizes and warps of the split-K decode kernel per (format, activation dtype).

    One BLOCK_M = 16 tile of rows (the smallest tensor-core dot; padded rows read as 0, and
    decode is bound by reading W, not by the wasted MMA rows). 8 warps and 1 stage, as for the
    GEMM (gemm_launch_config's NOTE).
    """
    return {"BLOCK_M": GEMV_MAX_ROWS, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 8, "num_stages": 1}


# Output columns per program of the split-K reduction.
REDUCE_BLOCK_N = 256


def splits_for(n_tiles: int, k_steps: int, num_sms: int | None) -> int:
    """K splits so that (N tiles x splits) programs fill about two waves of the GPU's SMs.

    A 4096-wide projection at BLOCK_N = 64 is 64 programs without a split: half of a 132-SM GPU
    idle while the product is bound by reading W. No more splits than K steps, nor MAX_NUM_SPLITS
    (the reduce pass reads every partial).
    """
    programs = CPU_PROGRAMS if num_sms is None else 2 * num_sms
    wanted = -(-programs // max(1, n_tiles))
    return max(1, min(wanted, k_steps, MAX_NUM_SPLITS))


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# ----------------------------------------------------------------------------- validation


def _check_features(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def check_quant_matmul_args(x, qweight, fmt, out_features, in_features, bias) -> None:
    """Validate quant_matmul's arguments (the one place they are checked)."""
    if not isinstance(fmt, str) or fmt not in GGUF_BLOCK_FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(GGUF_BLOCK_FORMATS)}, got {fmt!r}")
    qk, bpb = GGUF_BLOCK_FORMATS[fmt]
    _check_features("out_features", out_features)
    _check_features("in_features", in_features)
    if in_features % qk:
        raise ValueError(f"in_features: expected a multiple of {fmt}'s block size QK={qk}, got {in_features}")
    if not isinstance(qweight, torch.Tensor):
        raise ValueError(f"qweight: expected a torch.Tensor, got {type(qweight).__name__}")
    want = (out_features, in_features // qk * bpb)
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != want:
        raise ValueError(
            f"qweight: expected a uint8 tensor of shape {want} ({fmt}: {in_features // qk} blocks of {bpb} bytes "
            f"per row), got {qweight.dtype} {tuple(qweight.shape)}"
        )
    if not qweight.is_contiguous():
        raise ValueError(
            f"qweight: expected a contiguous tensor (blocks read in place), got strides {qweight.stride()}"
        )
    check_float("x", x)
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x: expected shape (..., {in_features}) (in_features last), got {tuple(x.shape)}")
    if bias is not None:
        check_float("bias", bias)
        check_same_dtype("x", x, bias=bias)
        if bias.dim() != 1 or bias.shape[0] != out_features:
            raise ValueError(f"bias: expected shape ({out_features},), got {tuple(bias.shape)}")
    check_same_device(x=x, qweight=qweight, bias=bias)


# ----------------------------------------------------------------------------- launcher


@on_input_device
def quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    fmt: str,
    out_features: int,
    in_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (M, K) fp16/bf16/fp32 @ W.T (+ bias) where W (N=out_features, K=in_features) is stored as GGUF blocks.

    qweight is uint8 (N, K // QK * bytes_per_block), row-major, each row the blocks of one output
    row exactly as in the GGUF file (GGUF_BLOCK_FORMATS[fmt] gives QK and the block size). Returns
    (M, N) in x's dtype; products accumulate in fp32 (fp32 x: IEEE dots, no TF32). Leading
    dimensions of x beyond one are kept: (..., K) -> (..., N). Up to GEMV_MAX_ROWS rows take the
    split-K decode kernel, more the tiled GEMM.
    """
    check_quant_matmul_args(x, qweight, fmt, out_features, in_features, bias)
    lead = x.shape[:-1]
    x2 = as_rows(x, in_features)  # (M, K), unit stride along K
    n_rows, n, k = x2.shape[0], out_features, in_features
    out = torch.empty((n_rows, n), dtype=x.dtype, device=x.device)
    if n_rows == 0:
        return out.reshape(*lead, n)
    qk, bpb = GGUF_BLOCK_FORMATS[fmt]
    has_bias = bias is not None
    bias_arg = bias if has_bias else x2  # never read when HAS_BIAS is False
    consts = {
        "FMT": fmt,
        "QK": qk,
        "BPB": bpb,
        "GROUP": GGUF_SCALE_GROUP[fmt],
        "HAS_BIAS": has_bias,
        "DOT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32",
    }
    row_bytes = qweight.shape[1]
    if n_rows > GEMV_MAX_ROWS:
        cfg = gemm_launch_config(fmt, x.dtype)
        num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        grid = (triton.cdiv(n_rows, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]))
        _quant_gemm_kernel[grid](
            x2, qweight, bias_arg, out, n_rows, n, k, x2.stride(0), row_bytes,
            num_warps=num_warps, num_stages=num_stages, **consts, **cfg,
        )  # fmt: skip
        return out.reshape(*lead, n)

    cfg = gemv_launch_config(fmt, x.dtype)
    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    n_tiles, k_steps = triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(k, cfg["BLOCK_K"])
    splits = splits_for(n_tiles, k_steps, _sm_count(x.device) if x.is_cuda else None)
    k_per_split = triton.cdiv(k_steps, splits) * cfg["BLOCK_K"]
    splits = triton.cdiv(k, k_per_split)  # rounding up the steps per split may leave fewer splits
    one_split = splits == 1
    partial = out if one_split else torch.empty((splits, n_rows, n), dtype=torch.float32, device=x.device)
    _quant_gemv_kernel[(n_tiles, splits)](
        x2, qweight, bias_arg, out, partial, n_rows, n, k, x2.stride(0), row_bytes, k_per_split,
        ONE_SPLIT=one_split, num_warps=num_warps, num_stages=num_stages, **consts, **cfg,
    )  # fmt: skip
    if not one_split:
        _splitk_reduce_kernel[(n_rows, triton.cdiv(n, REDUCE_BLOCK_N))](
            partial, bias_arg, out, n_rows, n, splits, HAS_BIAS=has_bias, BLOCK_N=REDUCE_BLOCK_N
        )
    return out.reshape(*lead, n)


# ----------------------------------------------------------------------------- AOT report


def aot_configs() -> list[AotConfig]:
    """Every format for fp16, bf16 and fp32 activations at Llama-like K = 4096: decode of one row into
    4096 outputs with bias (one split: enough N tiles), decode of 4 rows into 128 outputs (split K,
    then the reduce pass), and prefill of 256 rows with bias. Split counts follow the launcher's
    CPU_PROGRAMS sizing; on a GPU the same two variants (ONE_SPLIT or not) run. Identical compile
    jobs (the reduce pass is format-free) are kept once."""
    calls = []
    k = 4096
    for fmt, (qk, bpb) in GGUF_BLOCK_FORMATS.items():
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            name = str(dtype).removeprefix("torch.")
            # the split case's bias (added by the reduce pass) in half precision, none in fp32
            for rows, n, bias in [(1, 4096, True), (4, 128, dtype != torch.float32), (256, 4096, True)]:
                x = torch.empty(rows, k, dtype=dtype)
                weight = torch.empty(n, k // qk * bpb, dtype=torch.uint8)
                b = torch.empty(n, dtype=dtype) if bias else None
                note = f"{fmt} {name} M={rows} N={n} K={k}{' bias' if bias else ''}"
                calls.append((note, functools.partial(quant_matmul, x, weight, fmt, n, k, b)))
    unique = {}
    for cfg in configs_from_launches(calls):
        options = (cfg.num_warps, cfg.num_stages, cfg.extra.get("divisible_by_16"))
        key = (cfg.name, repr(sorted(cfg.arg_types.items())), repr(sorted(cfg.constexprs.items())), options)
        unique.setdefault(key, cfg)
    return list(unique.values())
