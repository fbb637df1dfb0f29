"""GGUF block matmul (fastx.kernels.quant_matmul) against the `gguf` package's dequantizer, per NUMERICS.md.

Legend: M = rows of x, N = out_features, K = in_features, QK = elements per block.

The reference dequantizes the same bytes with gguf's numpy code (gguf/quants.py, a port of
llama.cpp's) and multiplies in fp32/fp64. Weights come from gguf's own quantizer where it has one
(Q4_0 ... Q8_0); for the K-quants, which it can only dequantize, from random valid blocks: random
bytes for every quant and 6-bit scale field, fp16 scales set to sane values.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants

from fastx.kernels.launches import record_launches
from fastx.kernels.quant_matmul import GEMV_MAX_ROWS, GGUF_BLOCK_FORMATS, quant_matmul
from fastx.testing import assert_matches_reference

FORMATS = list(GGUF_BLOCK_FORMATS)
# Byte offsets of the fp16 fields of each block (d, and m/dmin where the format has one).
FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,)}
FP16_FIELDS.update({"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)})
# Largest |quant x sub-block scale| per format, to size random fp16 scales to weights of ~0.05.
QUANT_RANGE = {"Q4_0": 8, "Q4_1": 15, "Q5_0": 16, "Q5_1": 31, "Q8_0": 127, "Q4_K": 15 * 63, "Q5_K": 31 * 63}
QUANT_RANGE["Q6_K"] = 32 * 128


def _random_blocks(fmt: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k // QK * BPB) uint8 of valid blocks: random quant/scale bytes, finite fp16 scales."""
    qk, bpb = GGUF_BLOCK_FORMATS[fmt]
    blocks = rng.integers(0, 256, size=(n, k // qk, bpb), dtype=np.uint8)
    for offset in FP16_FIELDS[fmt]:
        scale = rng.uniform(-1.0, 1.0, size=(n, k // qk)) * 0.05 / QUANT_RANGE[fmt]
        blocks[..., offset : offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(n, k // qk, 2)
    return blocks.reshape(n, -1)


def _weights(fmt: str, n: int, k: int, seed: int = 0, source: str = "gguf"):
    """(qweight (N, K // QK * BPB) uint8, W (N, K) fp32 as gguf dequantizes it)."""
    rng = np.random.default_rng(seed)
    qtype = getattr(GGMLQuantizationType, fmt)
    blocks = None
    if source == "gguf":
        try:
            blocks = quants.quantize((rng.standard_normal((n, k)) * 0.05).astype(np.float32), qtype)
        except NotImplementedError:  # gguf 0.19 has no quantizer for the K-quants
            blocks = None
    if blocks is None:
        blocks = _random_blocks(fmt, n, k, rng)
    dequant = quants.dequantize(blocks, qtype).astype(np.float32)
    assert dequant.shape == (n, k) and np.isfinite(dequant).all()
    return torch.from_numpy(np.ascontiguousarray(blocks)), torch.from_numpy(dequant)


def _k_for(fmt: str) -> int:
    """Three 32-element blocks (not a whole number of 64-wide K steps) or two 256-element super-blocks."""
    return 96 if GGUF_BLOCK_FORMATS[fmt][0] == 32 else 512


def _kernels_run(call) -> list[str]:
    with record_launches() as launches:
        out = call()
    return out, [launch.kernel for launch in launches]


@pytest.mark.parametrize("rows", [1, 3, 17, 64])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_matches_gguf_dequantize(fmt, rows):
    n, k = 37, _k_for(fmt)
    qweight, w = _weights(fmt, n, k, seed=rows)
    x = torch.randn(rows, k)
    out, kernels = _kernels_run(lambda: quant_matmul(x, qweight, fmt, n, k))
    assert kernels[0] == ("_quant_gemv_kernel" if rows <= GEMV_MAX_ROWS else "_quant_gemm_kernel")
    assert out.shape == (rows, n) and out.dtype == torch.float32
    assert_matches_reference(out, x.double() @ w.double().T, x @ w.T)


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_blocks_cover_every_bit_pattern(fmt):
    """Random bytes reach quant values and 6-bit scales a quantizer of smooth data rarely writes."""
    n, k = 19, _k_for(fmt)
    qweight, w = _weights(fmt, n, k, seed=7, source="random")
    for rows in (2, 20):  # the decode kernel and the GEMM
        x = torch.randn(rows, k)
        assert_matches_reference(quant_matmul(x, qweight, fmt, n, k), x.double() @ w.double().T, x @ w.T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [3, 17])
@pytest.mark.parametrize("fmt", FORMATS)
def test_half_precision_with_bias(fmt, rows, dtype):
    n, k = 37, _k_for(fmt)
    qweight, w = _weights(fmt, n, k, seed=3)
    x = torch.randn(rows, k).to(dtype)
    bias = torch.randn(n).to(dtype)
    out = quant_matmul(x, qweight, fmt, n, k, bias)
    assert out.dtype == dtype and out.shape == (rows, n)
    reference = x.double() @ w.double().T + bias.double()
    assert_matches_reference(out, reference, F.linear(x, w.to(dtype), bias))


@pytest.mark.parametrize("fmt", ["Q4_0", "Q6_K"])
def test_split_and_unsplit_decode_and_gemm_agree(fmt):
    """The same product through one split, several splits (plus the reduce pass) and the GEMM."""
    qk = GGUF_BLOCK_FORMATS[fmt][0]
    k = 4 * 64 if qk == 32 else 256
    x = torch.randn(GEMV_MAX_ROWS + 1, k)
    bias = torch.randn(600)
    qweight, w = _weights(fmt, 600, k, seed=11)
    expected = F.linear(x, w, bias)
    # 600 outputs are 10 tiles of 64: enough programs without a split (CPU_PROGRAMS = 8)
    wide, wide_kernels = _kernels_run(lambda: quant_matmul(x[:5], qweight, fmt, 600, k, bias))
    assert wide_kernels == ["_quant_gemv_kernel"]
    # 37 outputs are one tile: K splits, then the reduction adds the bias
    narrow, narrow_kernels = _kernels_run(lambda: quant_matmul(x[:5], qweight[:37], fmt, 37, k, bias[:37]))
    assert narrow_kernels == ["_quant_gemv_kernel", "_splitk_reduce_kernel"]
    gemm, gemm_kernels = _kernels_run(lambda: quant_matmul(x, qweight, fmt, 600, k, bias))
    assert gemm_kernels == ["_quant_gemm_kernel"]
    torch.testing.assert_close(wide, expected[:5])
    torch.testing.assert_close(narrow, expected[:5, :37])
    torch.testing.assert_close(gemm, expected)


def test_strided_and_batched_x():
    fmt, n, k = "Q5_1", 23, 64
    qweight, w = _weights(fmt, n, k, seed=5)
    wide = torch.randn(6, k + 9)
    x = wide[:, 3 : 3 + k]  # rows at a stride of k + 9, unit stride along K
    torch.testing.assert_close(quant_matmul(x, qweight, fmt, n, k), x @ w.T)
    transposed = torch.randn(k, 5).T  # unit stride along rows: copied once
    torch.testing.assert_close(quant_matmul(transposed, qweight, fmt, n, k), transposed @ w.T)
    batched = torch.randn(2, 9, k)  # (..., K) -> (..., N), 18 rows: the GEMM
    out = quant_matmul(batched, qweight, fmt, n, k)
    assert out.shape == (2, 9, n)
    torch.testing.assert_close(out, batched @ w.T)
    assert quant_matmul(torch.empty(0, k), qweight, fmt, n, k).shape == (0, n)


def test_bad_arguments_name_what_was_expected():
    fmt, n, k = "Q4_K", 5, 256
    qweight = torch.zeros(n, 144, dtype=torch.uint8)
    x = torch.randn(2, k)
    with pytest.raises(ValueError, match=r"fmt: expected one of Q4_0, .*Q6_K, got 'Q3_K'"):
        quant_matmul(x, qweight, "Q3_K", n, k)
    with pytest.raises(ValueError, match=r"in_features: expected a multiple of Q4_K's block size QK=256, got 128"):
        quant_matmul(x[:, :128], qweight, fmt, n, 128)
    with pytest.raises(ValueError, match=r"out_features: expected a positive int, got 0"):
        quant_matmul(x, qweight, fmt, 0, k)
    with pytest.raises(ValueError, match=r"qweight: expected a uint8 tensor of shape \(5, 144\).*got torch.int8"):
        quant_matmul(x, qweight.view(torch.int8), fmt, n, k)
    with pytest.raises(ValueError, match=r"qweight: expected a uint8 tensor of shape \(5, 144\).*\(5, 143\)"):
        quant_matmul(x, qweight[:, :143], fmt, n, k)
    with pytest.raises(ValueError, match=r"qweight: expected a uint8 tensor of shape \(4, 144\).*\(5, 144\)"):
        quant_matmul(x, qweight, fmt, 4, k)
    with pytest.raises(ValueError, match=r"qweight: expected a contiguous tensor"):
        quant_matmul(x, torch.zeros(144, n, dtype=torch.uint8).T, fmt, n, k)
    with pytest.raises(ValueError, match=r"x: expected shape \(\.\.\., 256\).*got \(2, 255\)"):
        quant_matmul(x[:, :255], qweight, fmt, n, k)
    with pytest.raises(ValueError, match=r"x: expected dtype float32, float16 or bfloat16, got torch.int64"):
        quant_matmul(torch.zeros(2, k, dtype=torch.long), qweight, fmt, n, k)
    with pytest.raises(ValueError, match=r"bias: expected shape \(5,\), got \(4,\)"):
        quant_matmul(x, qweight, fmt, n, k, torch.zeros(4))
    with pytest.raises(ValueError, match=r"bias: expected dtype torch.float32 \(the dtype of x\), got torch.float16"):
        quant_matmul(x, qweight, fmt, n, k, torch.zeros(n, dtype=torch.float16))


_AOT_SUMMARY = """
import json
from fastx.kernels.quant_matmul import aot_configs
print(json.dumps([[c.name, c.constexprs.get("FMT"), c.arg_types.get("X"), c.constexprs.get("ONE_SPLIT")]
                  for c in aot_configs()]))
"""


def test_aot_configs_cover_both_kernels_for_every_format_and_dtype():
    """Recorded in a process without the interpreter, as the compile report records them."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _AOT_SUMMARY], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    seen = {(name, fmt, x_type) for name, fmt, x_type, _ in rows}
    for fmt in FORMATS:
        for x_type in ("*fp16", "*bf16", "*fp32"):
            assert ("_quant_gemm_kernel", fmt, x_type) in seen
            assert ("_quant_gemv_kernel", fmt, x_type) in seen
    assert {one for name, _, _, one in rows if name == "_quant_gemv_kernel"} == {True, False}
    assert any(name == "_splitk_reduce_kernel" for name, *_ in rows)
