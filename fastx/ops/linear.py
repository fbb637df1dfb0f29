"""Linear layers: F.linear, with the CPU's small-batch GEMM form chosen by row count.

On the GPU this is F.linear (cuBLAS). On the CPU with MKL as torch's BLAS, x @ W.T for a few
rows (the decode step of a small batch) runs far below the memory bandwidth that the same
product reaches when computed as (W @ x.T).T, the rows becoming the GEMM's narrow side. One row
is the extreme case: MKL's matrix-vector kernel streams the weight at about half the rate of a
two-column GEMM, so a single row is computed as two (the row twice) and one column is kept.
Measured on SmolLM2-135M's projections in fp32 (MKL from torch 2.13):
- 2-core Xeon, weights streamed from memory: 16 rows 70 -> 44 ms for the 120 layer GEMMs,
  32 rows 96 -> 61 ms; from 64 rows up F.linear is even or wins, so it keeps them;
- 2-core AMD EPYC: one row 12 -> 29-42 GB/s per projection shape, batch-1 decode of the whole
  model 18.6 -> 35.6 tokens/s; 2 to 7 rows 8-10 -> 28-35 GB/s.
MKL's GEMM time is far from linear in the narrow side: its kernels work on column groups, and a
partial group costs nearly a full one or more. The 121 GEMMs of one SmolLM2 decode step, weights
streamed, took (ms at columns) 1:43 2:17 3:23 4:23 8:39 9:51 12:69 13:87 15:105 16:53 17:71
23:108 24:71 32:75 on the EPYC. So the rows are padded with zeros to the next column count that
runs fastest (_gemm_columns); the padded columns' results are dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Row counts computed as W @ x.T (see the module docstring).
TRANSPOSED_ROWS = range(1, 49)
_MKL = torch.backends.mkl.is_available()


def _gemm_columns(rows: int) -> int:
    """The column count a GEMM of `rows` rows runs as: one row as two, three as four, up to eight
    as they are, then the next multiple of eight (see the module docstring's measurements)."""
    if rows <= 8:
        return {1: 2, 3: 4}.get(rows, rows)
    return -(-rows // 8) * 8


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in for F.linear: the same values; in the transposed form the result is a
    (rows, out_features) transposed view of the GEMM's output, not a contiguous tensor (a copy
    would cost up to a third of the GEMM it follows). Splitting its last dim with .view works;
    callers that need contiguous memory call .contiguous()."""
    if input.is_cuda or not _MKL or input.dim() != 2 or input.shape[0] not in TRANSPOSED_ROWS or input.dtype != torch.float32:
        return F.linear(input, weight, bias)
    rows = input.shape[0]
    padding = _gemm_columns(rows) - rows
    # Row-major rows: MKL reads a (K, M) column-major operand far faster at a few columns (one
    # step's GEMMs at 8 rows: 41 ms from contiguous rows, 83 ms from a transposed view).
    if rows == 1:  # the decode step of one sequence: the row twice (cheaper to build than zero padding)
        columns = input.expand(2, -1).contiguous().t()
    else:
        columns = (F.pad(input, (0, 0, 0, padding)) if padding else input).contiguous().t()  # (K, M + padding)
    if bias is None:
        out = torch.mm(weight, columns)  # (N, M)
    else:
        out = torch.addmm(bias[:, None], weight, columns)
    return out[:, :rows].t()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same checkpoints) whose forward is fastx.ops.linear."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)
