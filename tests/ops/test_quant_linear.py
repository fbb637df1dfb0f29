"""QuantizedLinear / QuantizedEmbedding against eager PyTorch on the dequantized weight (CPU path).

The weight is the `gguf` package's own dequantization of the blocks, so these tests tie the module to
the reference dequantizer and to F.linear / F.embedding in one step. One row group: the result is the
same GEMM on the same fp32 weight, so it must be identical to fastx.ops.linear on that weight; chunked
and mixed-format weights run the GEMM on row subsets, compared at fp32 tolerance (NUMERICS.md).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")

import fastx.ops.quant_linear as quant_linear  # noqa: E402
from fastx.ops.linear import linear  # noqa: E402
from fastx.ops.quant_linear import DequantBuffer, QuantizedEmbedding, QuantizedLinear  # noqa: E402


def _blocks(fmt: str, rows: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 rows of `fmt`, the gguf package's fp32 dequantization of them)."""
    values = np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32) * 0.1
    qtype = gguf.GGMLQuantizationType[fmt]
    raw = gguf.quants.quantize(values, qtype)  # F16 comes back as float16 values: their bytes are the rows
    return torch.from_numpy(raw.view(np.uint8)), torch.from_numpy(gguf.quants.dequantize(raw, qtype))


@pytest.mark.parametrize("fmt", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16"])
@pytest.mark.parametrize("m", [1, 3, 17, 64])
def test_one_group_equals_linear_on_dequantized_weight(fmt, m):
    n, k = 37, 96  # N odd, K three blocks
    raw, weight = _blocks(fmt, n, k)
    bias = torch.randn(n)
    layer = QuantizedLinear(k, n, [(fmt, raw)], bias=bias)
    x = torch.randn(m, k)
    assert torch.equal(layer(x), linear(x, weight, bias))
    assert torch.equal(layer.project(x), linear(x, weight))
    torch.testing.assert_close(layer(x), F.linear(x, weight, bias))


def test_batched_and_non_contiguous_input():
    raw, weight = _blocks("Q8_0", 29, 64)
    layer = QuantizedLinear(64, 29, [("Q8_0", raw)])
    x = torch.randn(64, 2, 5).transpose(0, 2)  # (5, 2, 64), not contiguous
    torch.testing.assert_close(layer(x), F.linear(x, weight))
    assert layer(x).shape == (5, 2, 29)


def test_mixed_format_groups_and_chunks(monkeypatch):
    """A fused projection whose pieces differ in format (Q4_K_M's q/k vs v): one GEMM over all rows."""
    (q4, w4), (q8, w8), (q16, w16) = _blocks("Q4_1", 11, 64, 1), _blocks("Q8_0", 5, 64, 2), _blocks("F16", 3, 64, 3)
    groups = [("Q4_1", q4), ("Q8_0", q8), ("F16", q16)]
    layer = QuantizedLinear(64, 19, groups, bias=torch.randn(19))
    weight = torch.cat([w4, w8, w16])
    assert layer.fmt == "mixed" and layer.group_rows == (11, 5, 3)
    assert torch.equal(layer.dequantized_weight(), weight)
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias))
    monkeypatch.setattr(quant_linear, "CHUNK_VALUES", 64 * 4)  # 4 rows a chunk: chunks cross the groups
    torch.testing.assert_close(layer(x), F.linear(x, weight, layer.bias))
    torch.testing.assert_close(layer.project(x[:1]), F.linear(x[:1], weight))


def test_shared_buffer_is_reused_across_layers():
    buffer = DequantBuffer()
    (a, wa), (b, wb) = _blocks("Q4_0", 16, 64, 4), _blocks("Q4_0", 8, 64, 5)
    first, second = (
        QuantizedLinear(64, 16, [("Q4_0", a)], buffer=buffer),
        QuantizedLinear(64, 8, [("Q4_0", b)], buffer=buffer),
    )
    x = torch.randn(2, 64)
    torch.testing.assert_close(first(x), F.linear(x, wa))
    pointer = buffer.get(1, torch.device("cpu")).data_ptr()
    torch.testing.assert_close(second(x), F.linear(x, wb))  # smaller: fits the same memory
    assert buffer.get(1, torch.device("cpu")).data_ptr() == pointer


def test_buffer_made_under_inference_mode_serves_later_plain_calls():
    raw, weight = _blocks("Q4_1", 8, 64, 7)
    layer = QuantizedLinear(64, 8, [("Q4_1", raw)])
    x = torch.randn(1, 64)
    with torch.inference_mode():  # the engine's steps allocate the buffer first
        layer(x)
    torch.testing.assert_close(layer(x), F.linear(x, weight))


def test_embedding_dequantizes_looked_up_rows_and_ties_to_a_head():
    raw, table = _blocks("Q8_0", 50, 64, 6)
    embed = QuantizedEmbedding("Q8_0", raw, 64)
    ids = torch.tensor([[0, 49, 7], [7, 3, 3]])
    assert torch.equal(embed(ids), F.embedding(ids, table))
    head = embed.as_linear()
    assert head.qweight_0.data_ptr() == embed.qweight.data_ptr()  # one copy of the matrix
    h = torch.randn(4, 64)
    assert torch.equal(head(h), linear(h, table))


def test_bad_arguments_name_themselves():
    raw, _ = _blocks("Q4_1", 8, 64)
    with pytest.raises(ValueError, match="groups: expected rows summing to out_features 9, got 8"):
        QuantizedLinear(64, 9, [("Q4_1", raw)])
    with pytest.raises(ValueError, match=r"groups\[0\]: expected uint8 Q4_1 rows of shape \(8, 60\)"):
        QuantizedLinear(96, 8, [("Q4_1", raw)])
    with pytest.raises(ValueError, match=r"groups\[0\]: expected a format among .* got 'Q2_K'"):
        QuantizedLinear(64, 8, [("Q2_K", raw)])
    with pytest.raises(ValueError, match="groups: expected at least one"):
        QuantizedLinear(64, 8, [])
    layer = QuantizedLinear(64, 8, [("Q4_1", raw)])
    with pytest.raises(ValueError, match=r"input: expected last dim 64, got \(2, 32\)"):
        layer(torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"qweight: expected uint8 Q4_1 rows"):
        QuantizedEmbedding("Q4_1", raw.float(), 64)
