"""fastx.ops.gguf_dequant against the `gguf` package's numpy dequantizers, bit for bit.

Blocks come from the package's own quantizer where it has one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, BF16, F16)
and otherwise (K-quants) are valid random blocks: random bytes whose fp16 scale fields hold finite
values. Raw random bytes (NaN and inf scales included) must match too, NaN for NaN.
"""

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from fastx.ops.gguf_dequant import BLOCK_FORMATS, GGML_TYPE_IDS, dequantize, row_bytes  # noqa: E402

QUANTIZABLE = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16")
# byte offsets of each K-quant block's fp16 fields (ggml-common.h)
K_SCALE_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def _reference(raw: np.ndarray, fmt: str) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[fmt])


def _valid_k_blocks(rng, fmt: str, rows: int, blocks: int) -> np.ndarray:
    block_bytes = BLOCK_FORMATS[fmt][1]
    raw = rng.integers(0, 256, size=(rows, blocks, block_bytes), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[fmt]:
        scale = rng.uniform(-0.05, 0.05, size=(rows, blocks)).astype(np.float16)
        raw[..., offset : offset + 2] = scale.view(np.uint8).reshape(rows, blocks, 2)
    return raw.reshape(rows, -1)


def test_type_ids_and_sizes_match_the_gguf_package():
    for type_id, fmt in GGML_TYPE_IDS.items():
        qtype = gguf.GGMLQuantizationType(type_id)
        assert qtype.name == fmt
        assert gguf.GGML_QUANT_SIZES[qtype] == BLOCK_FORMATS[fmt]


@pytest.mark.parametrize("fmt", QUANTIZABLE)
@pytest.mark.parametrize("rows, blocks", [(1, 1), (3, 5), (17, 2)])
def test_quantized_by_gguf_equals_reference(fmt, rows, blocks):
    block = BLOCK_FORMATS[fmt][0] if fmt not in ("BF16", "F16") else 32
    values = np.random.default_rng(rows * 7 + blocks).standard_normal((rows, blocks * block)).astype(np.float32)
    quantized = gguf.quants.quantize(values, gguf.GGMLQuantizationType[fmt])  # F16 comes back as float16
    got = dequantize(torch.from_numpy(quantized.view(np.uint8)), fmt)
    expected = _reference(quantized, fmt)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got.numpy().view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("fmt", sorted(K_SCALE_OFFSETS))
@pytest.mark.parametrize("rows, blocks", [(1, 1), (3, 2), (17, 1)])
def test_valid_random_k_blocks_equal_reference(fmt, rows, blocks):
    raw = _valid_k_blocks(np.random.default_rng(rows + 31 * blocks), fmt, rows, blocks)
    expected = _reference(raw, fmt)
    assert np.isfinite(expected).all()
    np.testing.assert_array_equal(
        dequantize(torch.from_numpy(raw), fmt).numpy().view(np.uint32), expected.view(np.uint32)
    )


@pytest.mark.parametrize("fmt", sorted(BLOCK_FORMATS))
def test_raw_random_bytes_equal_reference_nan_for_nan(fmt):
    """Any bytes are a valid block: every bit pattern of the scales (inf, NaN) must come out the same."""
    raw = np.random.default_rng(5).integers(0, 256, size=(4, 3 * BLOCK_FORMATS[fmt][1]), dtype=np.uint8)
    with np.errstate(all="ignore"):
        expected = _reference(raw, fmt)
    np.testing.assert_array_equal(dequantize(torch.from_numpy(raw), fmt).numpy(), expected)


@pytest.mark.parametrize("fmt", ["Q4_1", "Q6_K"])
def test_non_contiguous_rows_and_out_buffer(fmt):
    rng = np.random.default_rng(1)
    raw = (
        _valid_k_blocks(rng, fmt, 9, 1)
        if fmt in K_SCALE_OFFSETS
        else gguf.quants.quantize(rng.standard_normal((9, 64)).astype(np.float32), gguf.GGMLQuantizationType[fmt])
    )
    strided = torch.from_numpy(raw)[::2]  # every other row: a non-contiguous view
    expected = _reference(raw[::2].copy(), fmt)
    out = torch.full(tuple(expected.shape), float("nan"))
    result = dequantize(strided, fmt, out=out)
    assert result.data_ptr() == out.data_ptr()
    np.testing.assert_array_equal(out.numpy(), expected)


def test_row_bytes():
    assert row_bytes("Q4_1", 576) == 18 * 20
    assert row_bytes("Q6_K", 512) == 2 * 210
    assert row_bytes("F16", 7) == 14
    with pytest.raises(ValueError, match="in_features: expected a positive multiple of 256 for Q4_K, got 576"):
        row_bytes("Q4_K", 576)
    with pytest.raises(ValueError, match="fmt: expected one of"):
        row_bytes("Q2_K", 256)


def test_bad_arguments_name_themselves():
    rows = torch.zeros(2, 20, dtype=torch.uint8)
    with pytest.raises(ValueError, match="fmt: expected one of .* got 'Q3_K'"):
        dequantize(rows, "Q3_K")
    with pytest.raises(
        ValueError, match=r"blocks: expected a 2-D uint8 tensor of raw rows, got torch.float32 \(2, 20\)"
    ):
        dequantize(rows.float(), "Q4_1")
    with pytest.raises(ValueError, match="blocks: rows of Q8_0 are whole 34-byte blocks, got 20 bytes per row"):
        dequantize(rows, "Q8_0")
    with pytest.raises(ValueError, match=r"out: expected a contiguous float32 tensor of shape \(2, 32\)"):
        dequantize(rows, "Q4_1", out=torch.empty(2, 33))


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q4_K"])
def test_four_bit_groups_are_the_files_values(fmt):
    """scale * q + minimum per group of 32 gives dequantize()'s values: the int4 route reuses them as they are."""
    from fastx.ops.gguf_dequant import four_bit_groups

    rng = np.random.default_rng(11)
    if fmt == "Q4_K":
        raw = _valid_k_blocks(rng, fmt, 3, 2)
    else:
        values = rng.standard_normal((3, 512)).astype(np.float32)
        raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType[fmt])
    blocks = torch.from_numpy(raw.view(np.uint8))
    q, scale, minimum = four_bit_groups(blocks, fmt)
    assert q.dtype == torch.uint8 and q.shape == (3, 512) and int(q.max()) <= 15 and scale.shape == (3, 16)
    rebuilt = (q.float().view(3, 16, 32) * scale.unsqueeze(-1) + minimum.unsqueeze(-1)).view(3, 512)
    torch.testing.assert_close(rebuilt, dequantize(blocks, fmt), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"fmt: expected one of Q4_0, Q4_1, Q4_K, got 'Q8_0'"):
        four_bit_groups(blocks, "Q8_0")
