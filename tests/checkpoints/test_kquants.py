"""fastx.checkpoints.kquants against a plain scalar port of llama.cpp's reference C loops (bit for bit),
and dequantized by the `gguf` package within stated error bounds.

The port below transcribes ggml/src/ggml-quants.c (quantize_row_q{4,5,6}_K_ref, make_qkx2_quants,
make_qx_quants) one statement at a time in numpy float32 scalars: no vectorization, so it checks the
vectorized module's loop order, masks and bit packing independently.
"""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from fastx.checkpoints import kquants  # noqa: E402

f32 = np.float32
QK_K = 256


def nearest_int(value) -> int:
    return int(np.rint(f32(value)))


def make_qkx2_quants(n, nmax, x, weights, rmin, rdelta, nstep):
    L, Laux = [0] * n, [0] * n
    mn, mx = x[0], x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > 0:
        mn = f32(0)
    if mx == mn:
        return f32(0), -mn, [0] * n
    iscale = f32(nmax) / (mx - mn)
    scale = f32(1) / iscale
    best_error = f32(0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
        diff = scale * f32(L[i]) + mn - x[i]
        best_error += weights[i] * (diff * diff)
    for step in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (mx - mn)
        sum_l = sum_l2 = sum_xl = f32(0)
        for i in range(n):
            ll = max(0, min(nmax, nearest_int(iscale * (x[i] - mn))))
            Laux[i] = ll
            w = weights[i]
            sum_l += w * f32(ll)
            sum_l2 += w * f32(ll) * f32(ll)
            sum_xl += w * f32(ll) * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = f32(0)
                this_scale = sum_xl / sum_l2
            cur_error = f32(0)
            for i in range(n):
                diff = this_scale * f32(Laux[i]) + this_min - x[i]
                cur_error += weights[i] * (diff * diff)
            if cur_error < best_error:
                L = list(Laux)
                best_error, scale, mn = cur_error, this_scale, this_min
    return scale, -mn, L


def make_qx_quants(n, nmax, x):
    mx = amax = f32(0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax, mx = ax, x[i]
    if amax < f32(1e-15):
        return f32(0), [0] * n
    iscale = f32(-nmax) / mx
    L = [0] * n
    sumlx = suml2 = f32(0)
    for i in range(n):
        ll = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = ll + nmax
        w = x[i] * x[i]
        sumlx += w * x[i] * f32(ll)
        suml2 += w * f32(ll) * f32(ll)
    scale = sumlx / suml2 if suml2 else f32(0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(f32(nmax) + f32(0.1) * f32(step)) / mx
        sumlx = suml2 = f32(0)
        for i in range(n):
            ll = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            w = x[i] * x[i]
            sumlx += w * x[i] * f32(ll)
            suml2 += w * f32(ll) * f32(ll)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            for i in range(n):
                L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale, L


def fp16(value) -> np.float16:
    return np.float16(f32(value))


def q45_k_ref(x, nmax, rmin, nstep):
    """quantize_row_q4_K_ref / q5_K_ref for one block: (d, dmin, 12 scale bytes, 256 levels)."""
    scales, mins, L = [f32(0)] * 8, [f32(0)] * 8, [0] * QK_K
    max_scale = max_min = f32(0)
    for j in range(8):
        sub = x[32 * j : 32 * j + 32]
        sum_x2 = f32(0)
        for v in sub:
            sum_x2 += v * v
        av_x = np.sqrt(sum_x2 / f32(32))
        weights = [av_x + abs(v) for v in sub]
        scales[j], mins[j], L[32 * j : 32 * j + 32] = make_qkx2_quants(32, nmax, sub, weights, rmin, 0.1, nstep)
        if scales[j] > max_scale:
            max_scale = scales[j]
        if mins[j] > max_min:
            max_min = mins[j]
    inv_scale = f32(63) / max_scale if max_scale > 0 else f32(0)
    inv_min = f32(63) / max_min if max_min > 0 else f32(0)
    packed = [0] * 12
    ls_all, lm_all = [], []
    for j in range(8):
        ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
        ls_all.append(ls)
        lm_all.append(lm)
        if j < 4:
            packed[j], packed[j + 4] = ls, lm
        else:
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            packed[j - 4] |= (ls >> 4) << 6
            packed[j] |= (lm >> 4) << 6
    d, dmin = fp16(max_scale / f32(63)), fp16(max_min / f32(63))
    for j in range(8):
        dd = f32(d) * f32(ls_all[j])
        if not dd:
            continue
        dm = f32(dmin) * f32(lm_all[j])
        for ii in range(32):
            L[32 * j + ii] = max(0, min(nmax, nearest_int((x[32 * j + ii] + dm) / dd)))
    return d, dmin, packed, L


def q4_k_ref(x):
    d, dmin, packed, L = q45_k_ref(x, 15, -1.0, 20)
    qs = []
    for j in range(0, QK_K, 64):
        qs += [L[j + i] | (L[j + i + 32] << 4) for i in range(32)]
    return bytes(np.array([d, dmin], np.float16).tobytes()) + bytes(packed) + bytes(qs)


def q5_k_ref(x):
    d, dmin, packed, L = q45_k_ref(x, 31, -0.5, 15)
    qh, ql = [0] * 32, []
    m1, m2 = 1, 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1, l2 = L[n + j], L[n + j + 32]
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            ql.append(l1 | (l2 << 4))
        m1, m2 = m1 << 2, m2 << 2
    return bytes(np.array([d, dmin], np.float16).tobytes()) + bytes(packed) + bytes(qh) + bytes(ql)


def q6_k_ref(x):
    L, scales = [0] * QK_K, [f32(0)] * 16
    max_scale = max_abs_scale = f32(0)
    for ib in range(16):
        scales[ib], L[16 * ib : 16 * ib + 16] = make_qx_quants(16, 32, x[16 * ib : 16 * ib + 16])
        if abs(scales[ib]) > max_abs_scale:
            max_abs_scale, max_scale = abs(scales[ib]), scales[ib]
    if max_abs_scale < f32(1e-15):
        return bytes(210)
    iscale = f32(-128) / max_scale
    d = fp16(f32(1) / iscale)
    q_scales = [min(127, nearest_int(iscale * s)) for s in scales]
    for j in range(16):
        dd = f32(d) * f32(q_scales[j])
        if not dd:
            continue
        for ii in range(16):
            L[16 * j + ii] = max(-32, min(31, nearest_int(x[16 * j + ii] / dd))) + 32
    ql, qh = [0] * 128, [0] * 64
    for h, j in enumerate(range(0, QK_K, 128)):
        for i in range(32):
            q1, q2, q3, q4 = (L[j + i + k] for k in (0, 32, 64, 96))
            ql[64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[64 * h + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return bytes(ql) + bytes(qh) + np.array(q_scales, np.int8).tobytes() + np.array([d], np.float16).tobytes()


REFERENCES = {"Q4_K": q4_k_ref, "Q5_K": q5_k_ref, "Q6_K": q6_k_ref}


def _edge_blocks() -> np.ndarray:
    rng = np.random.default_rng(0)
    blocks = [
        rng.standard_normal(QK_K),  # ordinary weights
        np.zeros(QK_K),  # all zero
        np.full(QK_K, 0.37),  # constant positive
        np.full(QK_K, -1.5),  # constant negative
        np.where(np.arange(QK_K) == 77, 40.0, rng.standard_normal(QK_K) * 0.01),  # one outlier
        -np.abs(rng.standard_normal(QK_K)),  # negative only
        np.abs(rng.standard_normal(QK_K)) * 1e-3 + 0.5,  # positive, offset from zero
        np.concatenate([np.zeros(128), rng.standard_normal(128) * 3]),  # half the sub-blocks zero
        rng.standard_normal(QK_K) * 1e-30,  # below the all-zero threshold in some sub-blocks
    ]
    return np.stack(blocks).astype(np.float32)


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_bit_exact_against_scalar_reference(name):
    blocks = _edge_blocks()
    got = kquants.QUANTIZERS[name](blocks)
    assert got.shape == (len(blocks), kquants.BLOCK_BYTES[name]) and got.dtype == np.uint8
    for index, block in enumerate(blocks):
        expected = REFERENCES[name]([f32(v) for v in block])
        assert got[index].tobytes() == expected, f"{name} block {index} differs from the scalar reference"


# RMS error of a standard normal tensor after the round trip: the measured value (2026-12) times ~1.2.
RMS_BOUNDS = {"Q4_K": 0.085, "Q5_K": 0.045, "Q6_K": 0.022}


@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_dequantized_error_is_bounded(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    blocks = kquants.QUANTIZERS[name](x).reshape(64, -1)
    y = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name])
    assert y.shape == x.shape
    rms = float(np.sqrt(np.mean((y - x) ** 2)))
    assert rms < RMS_BOUNDS[name], rms
    # ... and no worse than the 32-block type of the same width, which the `gguf` package quantizes.
    legacy = {"Q4_K": "Q4_0", "Q5_K": "Q5_0", "Q6_K": "Q8_0"}[name]
    legacy_type = gguf.GGMLQuantizationType[legacy]
    legacy_rms = np.sqrt(np.mean((gguf.quants.dequantize(gguf.quants.quantize(x, legacy_type), legacy_type) - x) ** 2))
    assert rms < legacy_rms * (1.0 if name != "Q6_K" else 4.0)
    edge = _edge_blocks()
    z = gguf.quants.dequantize(kquants.QUANTIZERS[name](edge), gguf.GGMLQuantizationType[name]).reshape(edge.shape)
    assert np.array_equal(z[1], np.zeros(QK_K))  # all zero stays zero
    assert np.abs(z[2] - edge[2]).max() < 0.02 * 0.37 + 1e-3  # a constant block comes back close
    assert abs(z[4][77] - 40.0) < 40.0 * 0.05  # the outlier survives


def test_size_must_be_a_multiple_of_256():
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize_q4_k(np.zeros(100, np.float32))
