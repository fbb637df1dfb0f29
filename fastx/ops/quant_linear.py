"""Projections and embeddings whose weights stay in GGUF block formats (Q4_0 ... Q6_K, F16, BF16, F32).

Legend: M = rows of the input, N = out features, K = in features, E = embedding dim.

A `QuantizedLinear` holds its weight as raw GGUF rows (uint8, memory-mapped from the file where the
loader could) in one or more row groups: a fused projection (Llama's qkv_proj, gate_up_proj) whose
pieces share a format holds one group (their block rows concatenated), and one group per piece when
the file mixes formats (Q4_K_M files store attn_v in Q6_K beside Q4_K q and k).
- CUDA: each group goes through fastx.kernels.quant_matmul (dequantize in registers), imported on the
  first CUDA call so the CPU path never needs Triton.
- CPU: the weight is dequantized in torch (fastx.ops.gguf_dequant, exact) into a buffer reused by every
  layer of the model, a chunk of at most CHUNK_VALUES values at a time, then multiplied by the fp32
  GEMM of fastx.ops.linear. Results equal dequantize-then-matmul: the same fp32 weights meet the same
  GEMM (chunks change which rows one GEMM call computes, not how a row is summed).
A `QuantizedEmbedding` dequantizes only the looked-up rows. The tied LM head of a model is the same
blocks seen as a QuantizedLinear (`as_linear`), so the matrix is held once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastx.ops.gguf_dequant import BLOCK_FORMATS, FLOAT_FORMATS, dequantize, row_bytes
from fastx.ops.linear import linear

# NOTE: the values dequantized per GEMM call on the CPU. A whole SmolLM2 layer (gate_up: 1.77 M values,
# 7 MB fp32) fits; the 49152 x 576 LM head (28 M values, 113 MB) runs in ~14 chunks, so the fp32 copy the
# GEMM reads is still in cache and the buffer stays small (8 MB, ~8% of the default 98 MB file).
CHUNK_VALUES = 1 << 21


class DequantBuffer:
    """One float32 scratch buffer shared by the quantized layers of a model (they run one at a time)."""

    def __init__(self):
        self._buffers: dict[torch.device, torch.Tensor] = {}

    def get(self, numel: int, device: torch.device) -> torch.Tensor:
        buffer = self._buffers.get(device)
        if buffer is None or buffer.numel() < numel:
            # A normal tensor even when first needed under inference_mode (the engine's steps): an
            # inference tensor could not be written by a later call outside it.
            with torch.inference_mode(False):
                buffer = self._buffers[device] = torch.empty(numel, dtype=torch.float32, device=device)
        return buffer[:numel]


def check_blocks(fmt: str, qweight: torch.Tensor, rows: int, in_features: int, what: str) -> None:
    """ValueError naming `what` unless `qweight` is (rows, row bytes of `fmt`) uint8."""
    expected = (rows, row_bytes(fmt, in_features))
    if qweight.dtype != torch.uint8 or tuple(qweight.shape) != expected:
        raise ValueError(
            f"{what}: expected uint8 {fmt} rows of shape {expected} ({in_features} values a row), "
            f"got {qweight.dtype} {tuple(qweight.shape)}"
        )


class QuantizedLinear(nn.Module):
    """Drop-in for fastx.ops.linear.Linear (forward, project) on a weight kept in GGUF block formats.

    `groups`: [(format, uint8 (rows_i, row bytes) tensor)], rows summing to out_features, in order.
    `bias`: True for an (empty) bias parameter the checkpoint loader fills, or a tensor.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        groups: list[tuple[str, torch.Tensor]],
        bias: bool | torch.Tensor = False,
        buffer: DequantBuffer | None = None,
    ):
        super().__init__()
        if not groups:
            raise ValueError("groups: expected at least one (format, blocks) row group, got none")
        total = 0
        for i, (fmt, qweight) in enumerate(groups):
            if fmt not in BLOCK_FORMATS:
                raise ValueError(f"groups[{i}]: expected a format among {', '.join(BLOCK_FORMATS)}, got {fmt!r}")
            check_blocks(fmt, qweight, qweight.shape[0] if qweight.dim() == 2 else -1, in_features, f"groups[{i}]")
            total += qweight.shape[0]
        if total != out_features:
            raise ValueError(f"groups: expected rows summing to out_features {out_features}, got {total}")
        self.in_features, self.out_features = in_features, out_features
        self.formats = tuple(fmt for fmt, _ in groups)
        self.group_rows = tuple(q.shape[0] for _, q in groups)
        for i, (_, qweight) in enumerate(groups):
            # Not persistent: a state_dict of these would be raw bytes no other loader understands.
            self.register_buffer(f"qweight_{i}", qweight, persistent=False)
        if isinstance(bias, torch.Tensor):
            self.bias = nn.Parameter(bias, requires_grad=False)
        elif bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
        else:
            self.bias = None
        self.buffer = buffer if buffer is not None else DequantBuffer()

    @property
    def fmt(self) -> str:
        """The format, or "mixed" for row groups of several formats."""
        return self.formats[0] if len(set(self.formats)) == 1 else "mixed"

    def groups(self) -> list[tuple[str, torch.Tensor]]:
        return [(fmt, getattr(self, f"qweight_{i}")) for i, fmt in enumerate(self.formats)]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, formats={self.formats}"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._gemm(input, self.bias)

    def project(self, input: torch.Tensor) -> torch.Tensor:
        """input @ weight.T without the bias (Linear.project)."""
        return self._gemm(input, None)

    def dequantized_weight(self) -> torch.Tensor:
        """The (N, K) float32 weight, freshly allocated (for tests and for converting a model)."""
        return torch.cat([dequantize(q, fmt) for fmt, q in self.groups()], dim=0)

    def _gemm(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if input.shape[-1] != self.in_features:
            raise ValueError(f"input: expected last dim {self.in_features}, got {tuple(input.shape)}")
        rows = input.reshape(-1, self.in_features)  # (M, K)
        out = self._cuda(rows, bias) if rows.is_cuda else self._cpu(rows, bias)
        return out.view(*input.shape[:-1], self.out_features)

    def _cuda(self, rows: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        from fastx.kernels.quant_matmul import quant_matmul  # Triton only where a GPU runs it

        outs, start = [], 0
        for fmt, qweight in self.groups():
            n = qweight.shape[0]
            b = bias[start : start + n] if bias is not None else None
            if fmt in FLOAT_FORMATS:  # plain values: cuBLAS on the weight cast to the activations' dtype
                outs.append(F.linear(rows, _float_view(qweight, fmt).to(rows.dtype), b))
            else:
                outs.append(quant_matmul(rows, qweight, fmt, n, self.in_features, bias=b))
            start += n
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def _cpu(self, rows: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        k, m = self.in_features, rows.shape[0]
        chunk_rows = max(1, CHUNK_VALUES // k)
        if len(self.formats) == 1 and self.out_features <= chunk_rows:  # the common case: one dequantize, one GEMM
            weight = self._dequantize_rows(0, self.out_features)
            return _cast_out(linear(rows, weight.to(rows.dtype), bias), rows)
        out = torch.empty(m, self.out_features, dtype=rows.dtype, device=rows.device)  # (M, N)
        for start in range(0, self.out_features, chunk_rows):
            stop = min(start + chunk_rows, self.out_features)
            weight = self._dequantize_rows(start, stop).to(rows.dtype)
            out[:, start:stop] = linear(rows, weight, bias[start:stop] if bias is not None else None)
        return out

    def _dequantize_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of the weight as float32, in the shared buffer (valid until the next call)."""
        weight = self.buffer.get((stop - start) * self.in_features, self.qweight_0.device).view(stop - start, -1)
        first = 0
        for fmt, qweight in self.groups():
            last = first + qweight.shape[0]
            lo, hi = max(start, first), min(stop, last)
            if lo < hi:
                dequantize(qweight[lo - first : hi - first], fmt, out=weight[lo - start : hi - start])
            first = last
        return weight


def _float_view(qweight: torch.Tensor, fmt: str) -> torch.Tensor:
    """Raw F32/F16/BF16 rows -> the (N, K) tensor they store, without a copy."""
    return qweight.view({"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[fmt])


def _cast_out(out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return out if out.dtype == rows.dtype else out.to(rows.dtype)


class QuantizedEmbedding(nn.Module):
    """nn.Embedding on a table kept in a GGUF block format: a lookup dequantizes only its rows."""

    def __init__(self, fmt: str, qweight: torch.Tensor, embedding_dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        check_blocks(fmt, qweight, qweight.shape[0] if qweight.dim() == 2 else -1, embedding_dim, "qweight")
        self.fmt, self.embedding_dim, self.dtype = fmt, embedding_dim, dtype
        self.num_embeddings = qweight.shape[0]
        self.register_buffer("qweight", qweight, persistent=False)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, fmt={self.fmt}"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.reshape(-1)
        rows = self.qweight.index_select(0, ids)  # (T, row bytes): only the looked-up rows
        return dequantize(rows, self.fmt).to(self.dtype).view(*input_ids.shape, self.embedding_dim)

    def as_linear(self, buffer: DequantBuffer | None = None) -> QuantizedLinear:
        """The same blocks as a (V, E) projection: the tied LM head, with no second copy."""
        return QuantizedLinear(self.embedding_dim, self.num_embeddings, [(self.fmt, self.qweight)], buffer=buffer)
