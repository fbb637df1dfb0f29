"""llama.cpp's K-quant quantizers (Q4_K, Q5_K, Q6_K), vectorized in numpy over all blocks at once.

The `gguf` package dequantizes these types but cannot quantize them; this module follows the reference
C code in llama.cpp's ggml/src/ggml-quants.c (`quantize_row_q{4,5,6}_K_ref`, `make_qkx2_quants`,
`make_qx_quants`) step by step in float32. Every loop over the elements of a (sub-)block that
accumulates is kept in its sequential order (a Python loop over the block's columns, vectorized over
the blocks), so the results are bit-identical to a scalar float32 port of the C loops, and (tested
where llama-cpp-python installs) to llama.cpp's own quantizer. A C build whose compiler fuses
multiply-adds differently could still differ in the last bit of a scale.

Each `quantize_*` takes a float array whose size is a multiple of 256 and returns the GGUF block bytes,
(number of 256-element super-blocks, bytes per block) uint8.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
GROUP_MAX_EPS = np.float32(1e-15)
_CHUNK = 1 << 14  # super-blocks quantized at a time: bounds the temporaries (~100 MB for Q4_K)
_F32 = np.float32


def _nearest_int(values: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even (the float32 magic-number trick), as int32."""
    return np.rint(values).astype(np.int32)


def _weighted_error(scale, offset, levels, x, weights) -> np.ndarray:
    """sum_i w_i * (scale * L_i + offset - x_i)^2, accumulated in order over the columns."""
    error = np.zeros(x.shape[0], dtype=_F32)
    for i in range(x.shape[1]):
        diff = scale * levels[:, i] + offset - x[:, i]
        error = error + weights[:, i] * (diff * diff)
    return error


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """Scale, min and levels (0..nmax) per row of `x` minimising the weighted squared error of
    x ~ scale * L - min (llama.cpp's make_qkx2_quants with use_mad=false). Returns (scale, -min, L)."""
    # Column-major: the per-column loops below then read contiguous memory (the values are the same).
    x, weights = np.asfortranarray(x, dtype=_F32), np.asfortranarray(weights, dtype=_F32)
    rows, n = x.shape
    low = np.minimum(x.min(axis=1), _F32(0))
    high = x.max(axis=1)
    sum_w, sum_x = weights[:, 0].copy(), weights[:, 0] * x[:, 0]
    for i in range(1, n):
        sum_w = sum_w + weights[:, i]
        sum_x = sum_x + weights[:, i] * x[:, i]
    flat = high == low
    nmax_f = _F32(nmax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = nmax_f / np.where(flat, _F32(1), high - low)
        scale = _F32(1) / iscale
        levels = np.clip(_nearest_int(iscale[:, None] * (x - low[:, None])), 0, nmax).astype(_F32)
        best = _weighted_error(scale, low, levels, x, weights)
        for step in range(nstep + 1):
            iscale = (_F32(rmin) + _F32(rdelta) * _F32(step) + nmax_f) / (high - low)
            trial = np.clip(_nearest_int(iscale[:, None] * (x - low[:, None])), 0, nmax).astype(_F32)
            sum_l = np.zeros(rows, _F32)
            sum_l2 = np.zeros(rows, _F32)
            sum_xl = np.zeros(rows, _F32)
            for i in range(n):
                wl = weights[:, i] * trial[:, i]
                sum_l = sum_l + wl
                sum_l2 = sum_l2 + wl * trial[:, i]
                sum_xl = sum_xl + wl * x[:, i]
            det = sum_w * sum_l2 - sum_l * sum_l
            solvable = (det > 0) & ~flat
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, _F32(0), this_min)
            error = _weighted_error(this_scale, this_min, trial, x, weights)
            better = solvable & (error < best)
            levels = np.where(better[:, None], trial, levels)
            best = np.where(better, error, best)
            scale = np.where(better, this_scale, scale)
            low = np.where(better, this_min, low)
    scale = np.where(flat, _F32(0), scale).astype(_F32)
    levels = np.where(flat[:, None], _F32(0), levels)
    return scale, (-low).astype(_F32), levels.astype(np.uint8)


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric scale and levels (0..2*nmax-1, offset nmax) per row of `x`, weights x^2
    (llama.cpp's make_qx_quants with rmse_type=1 and no importance weights). Returns (scale, L)."""
    x = np.asfortranarray(x, dtype=_F32)  # column-major, as in make_qkx2_quants
    rows, n = x.shape
    at = np.abs(x).argmax(axis=1)  # the first element of largest magnitude, as the C loop's strict `>`
    peak = x[np.arange(rows), at]
    zero = np.abs(peak) < GROUP_MAX_EPS
    peak = np.where(zero, _F32(1), peak)
    weights = x * x
    nmax_f = _F32(nmax)

    def attempt(iscale):
        ints = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = ints.astype(_F32)
        sumlx, suml2 = np.zeros(rows, _F32), np.zeros(rows, _F32)
        for i in range(n):
            sumlx = sumlx + weights[:, i] * x[:, i] * lf[:, i]
            suml2 = suml2 + weights[:, i] * lf[:, i] * lf[:, i]
        return ints + nmax, sumlx, suml2

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        levels, sumlx, suml2 = attempt(-nmax_f / peak)
        scale = np.where(suml2 != 0, sumlx / suml2, _F32(0)).astype(_F32)
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            trial, sumlx, suml2 = attempt(-(nmax_f + _F32(0.1) * _F32(step)) / peak)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            levels = np.where(better[:, None], trial, levels)
            scale = np.where(better, sumlx / suml2, scale).astype(_F32)
            best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, _F32(0), scale)
    levels = np.where(zero[:, None], 0, levels)
    return scale.astype(_F32), levels.astype(np.uint8)


def _superblocks(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x, dtype=_F32).reshape(-1)
    if flat.size % QK_K:
        raise ValueError(f"K-quants need a multiple of {QK_K} values, got {flat.size}")
    return flat.reshape(-1, QK_K)


def _chunked(quantize_chunk, x: np.ndarray, block_bytes: int) -> np.ndarray:
    blocks = _superblocks(x)
    out = np.empty((blocks.shape[0], block_bytes), dtype=np.uint8)
    for start in range(0, blocks.shape[0], _CHUNK):
        out[start : start + _CHUNK] = quantize_chunk(blocks[start : start + _CHUNK])
    return out


def _scale_min_k4(blocks: np.ndarray, nmax: int, rmin: float, nstep: int):
    """The shared half of Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
    Returns (d, dmin as float16, the 12 packed scale bytes, levels (blocks, 256))."""
    nb = blocks.shape[0]
    sub = np.asfortranarray(blocks.reshape(nb * 8, 32))
    sum_x2 = np.zeros(sub.shape[0], _F32)
    for i in range(32):
        sum_x2 = sum_x2 + sub[:, i] * sub[:, i]
    av_x = np.sqrt(sum_x2 / _F32(32))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, levels = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), _F32(0))
    max_min = np.maximum(mins.max(axis=1), _F32(0))
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, _F32(63) / max_scale, _F32(0))
        inv_min = np.where(max_min > 0, _F32(63) / max_min, _F32(0))
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    d = (max_scale / _F32(63)).astype(np.float16)
    dmin = (max_min / _F32(63)).astype(np.float16)
    # Requantize each sub-block with the scales as stored (ls, lm: what get_scale_min_k4 unpacks).
    sub_d = (d.astype(_F32)[:, None] * ls.astype(_F32)).reshape(-1)
    sub_m = (dmin.astype(_F32)[:, None] * lm.astype(_F32)).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        fresh = np.clip(_nearest_int((sub + sub_m[:, None]) / sub_d[:, None]), 0, nmax).astype(np.uint8)
    levels = np.where((sub_d != 0)[:, None], fresh, levels)
    return d, dmin, packed, levels.reshape(nb, QK_K)


def _q4_k_chunk(blocks: np.ndarray) -> np.ndarray:
    d, dmin, packed, levels = _scale_min_k4(blocks, 15, -1.0, 20)
    pairs = levels.reshape(-1, 4, 2, 32)
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, 128)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), packed, qs], axis=1)


def _q5_k_chunk(blocks: np.ndarray) -> np.ndarray:
    d, dmin, packed, levels = _scale_min_k4(blocks, 31, -0.5, 15)
    pairs = levels.reshape(-1, 4, 2, 32)
    low = pairs & 0xF
    qs = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)
    high = (pairs >> 4).astype(np.uint8)  # (blocks, 4 groups of 64, 2 halves, 32)
    shifts = (2 * np.arange(4, dtype=np.uint8)[:, None] + np.arange(2, dtype=np.uint8)[None, :])[None, :, :, None]
    qh = np.bitwise_or.reduce((high << shifts).reshape(-1, 8, 32), axis=1).astype(np.uint8)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8), packed, qh, qs], axis=1)


def _q6_k_chunk(blocks: np.ndarray) -> np.ndarray:
    nb = blocks.shape[0]
    sub = blocks.reshape(nb * 16, 16)
    scales, levels = make_qx_quants(sub, 32)
    scales = scales.reshape(nb, 16)
    at = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), at]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = _F32(-128) / np.where(zero, _F32(1), max_scale)
        d = np.where(zero, _F32(0), _F32(1) / iscale).astype(np.float16)
        q_scales = np.minimum(_nearest_int(iscale[:, None] * scales), 127)
    q_scales = np.where(zero[:, None], 0, q_scales).astype(np.int8)
    sub_d = (d.astype(_F32)[:, None] * q_scales.astype(_F32)).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        fresh = (np.clip(_nearest_int(sub / sub_d[:, None]), -32, 31) + 32).astype(np.uint8)
    levels = np.where((sub_d != 0)[:, None], fresh, levels)
    levels = np.where(zero[:, None], 0, levels.reshape(nb, QK_K)).astype(np.uint8)
    quarters = levels.reshape(nb, 2, 4, 32)  # (blocks, halves of 128, quarters of 32, 32)
    low = quarters & 0xF
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], axis=2)
    high = quarters >> 4
    qh = high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)
    return np.concatenate(
        [ql.reshape(nb, 128), qh.reshape(nb, 64), q_scales.view(np.uint8), d.reshape(-1, 1).view(np.uint8)], axis=1
    )


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Q4_K: per 256 values an fp16 scale and min, 8 6-bit sub-scales and mins, 4-bit levels (4.5 bpw)."""
    return _chunked(_q4_k_chunk, x, BLOCK_BYTES["Q4_K"])


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """Q5_K: as Q4_K with 5-bit levels (5.5 bpw)."""
    return _chunked(_q5_k_chunk, x, BLOCK_BYTES["Q5_K"])


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Q6_K: per 256 values an fp16 scale, 16 8-bit sub-scales, symmetric 6-bit levels (6.5625 bpw)."""
    return _chunked(_q6_k_chunk, x, BLOCK_BYTES["Q6_K"])


QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}
