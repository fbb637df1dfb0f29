"""Linear layers: F.linear, with the CPU's small-batch GEMM orientation chosen by row count.

On the GPU this is F.linear (cuBLAS). On the CPU with MKL as torch's BLAS, x @ W.T for a few
rows (the decode step of a small batch) runs far below MKL's large-GEMM speed, while the same
product computed as (W @ x.T).T, the rows becoming the GEMM's narrow side, runs near it.
Measured on SmolLM2-135M's projections in fp32, weights streamed from memory (2-core Xeon,
MKL from torch 2.13): 16 rows 70 -> 44 ms for the 120 layer GEMMs, 32 rows 96 -> 61 ms; below
8 rows and from 64 rows up the two orientations are even or F.linear wins, so it keeps them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Row counts for which the transposed orientation is used (see the module docstring).
TRANSPOSED_ROWS = range(8, 49)
_MKL = torch.backends.mkl.is_available()


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in for F.linear: the same values; in the transposed orientation the result is the
    (rows, out_features) transposed view of the GEMM's output, not a contiguous tensor (a copy
    would cost up to a third of the GEMM it follows). Splitting its last dim with .view works;
    callers that need contiguous memory call .contiguous()."""
    if input.is_cuda or not _MKL or input.dim() != 2 or input.shape[0] not in TRANSPOSED_ROWS or input.dtype != torch.float32:
        return F.linear(input, weight, bias)
    if bias is None:
        out = torch.mm(weight, input.t())  # (N, M)
    else:
        out = torch.addmm(bias[:, None], weight, input.t())
    return out.t()


class Linear(nn.Linear):
    """nn.Linear (same parameters, same checkpoints) whose forward is fastx.ops.linear."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return linear(input, self.weight, self.bias)
