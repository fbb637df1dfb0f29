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

Packed weights (opt-in, `pack_linear_weights`): oneDNN's GEMM on a weight reordered once into
its blocked layout beats MKL from three rows up. The same 121 GEMMs took 29 ms at 16 rows (MKL:
53), 22 at 8 (39), 98 at 64 (F.linear: 166) and 678 at 512 (838); at one or two rows MKL's
two-column GEMM on the dense weight stays faster (16 vs 21 ms), so those rows keep it. The
packed copy sits beside the dense weight: weight memory doubles, which is why it is opt-in.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

# Row counts computed as W @ x.T (see the module docstring).
TRANSPOSED_ROWS = range(1, 49)
_MKL = torch.backends.mkl.is_available()
# oneDNN's linear on a pre-reordered weight: the op torch's inductor uses for frozen CPU models.
ONEDNN_PACKING = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
PACKED_MIN_ROWS = 3  # fewer rows keep MKL's two-column GEMM on the dense weight (faster there)
_PACK_ROWS_HINT = 16  # the batch size oneDNN picks the blocked layout for (fastest measured at 1-512 rows)


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
    if (
        input.is_cuda
        or not _MKL
        or input.dim() != 2
        or input.shape[0] not in TRANSPOSED_ROWS
        or input.dtype != torch.float32
        or not _transposed_form_is_faster(input, weight, bias)
    ):
        return F.linear(input, weight, bias)
    return _transposed_linear(input, weight, bias)


def _transposed_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows = input.shape[0]
    # Row-major rows: MKL reads a (K, M) column-major operand far faster at a few columns (one
    # step's GEMMs at 8 rows: 41 ms from contiguous rows, 83 ms from a transposed view).
    if rows == 1:  # the decode step of one sequence: the row twice (cheaper to build than zero padding)
        columns = input.expand(2, -1).contiguous().t()
    else:
        padding = _gemm_columns(rows) - rows
        columns = (F.pad(input, (0, 0, 0, padding)) if padding else input).contiguous().t()  # (K, M + padding)
    if bias is None:
        out = torch.mm(weight, columns)  # (N, M)
    else:
        out = torch.addmm(bias[:, None], weight, columns)
    return out[:, :rows].t()


# Which form wins depends on the CPU and its MKL build, not on the shape alone: the figures above
# are an AMD EPYC's; on a 2-core Intel Xeon the transposed form took 2-5x F.linear's time at 1-3
# rows and 0.4-0.8x at 16-48. So each (out, in, rows, bias) case is timed once per process, both
# forms alternately, the best of 3 each, and the transposed form kept only when clearly faster.
# The two forms give the same values up to fp32 summation order. FASTX_CPU_GEMM_FORM=linear or
# =transposed fixes the choice (reproducible to the bit across machines of one kind).
_CALIBRATION_ROUNDS = 3
_CALIBRATION_MARGIN = 1.15  # the transposed form must be this much faster to be chosen
_FORM_CHOICE: dict[tuple[int, int, int, bool], bool] = {}


def _transposed_form_is_faster(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    forced = os.environ.get("FASTX_CPU_GEMM_FORM", "auto")
    if forced != "auto":
        if forced not in ("linear", "transposed"):
            raise ValueError(f"FASTX_CPU_GEMM_FORM: expected auto, linear or transposed, got {forced!r}")
        return forced == "transposed"
    key = (weight.shape[0], weight.shape[1], input.shape[0], bias is not None)
    choice = _FORM_CHOICE.get(key)
    if choice is None:
        choice = _FORM_CHOICE[key] = _time_forms(input, weight, bias)
    return choice


def _time_forms(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    best = {F.linear: math.inf, _transposed_linear: math.inf}
    for _ in range(_CALIBRATION_ROUNDS):
        for form in best:
            start = time.perf_counter()
            form(input, weight, bias)
            best[form] = min(best[form], time.perf_counter() - start)
    return best[_transposed_linear] * _CALIBRATION_MARGIN < best[F.linear]


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """The (N, K) weight reordered into oneDNN's blocked layout (an opaque mkldnn tensor)."""
    if not ONEDNN_PACKING:
        raise ValueError("pack_weights: this torch build has no oneDNN (mkldnn) linear to run packed weights")
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        raise ValueError(
            f"pack_weights: expected a 2-D float32 CPU weight, got {weight.dtype} {tuple(weight.shape)} "
            f"on {weight.device}"
        )
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _PACK_ROWS_HINT)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same checkpoints) whose forward is fastx.ops.linear, or oneDNN's
    GEMM on a packed copy of the weight after `pack()`."""

    packed_weight: torch.Tensor | None = None  # not a parameter or buffer: checkpoints never see it

    def pack(self) -> None:
        """Add a packed copy of the weight (pack after loading: later writes to .weight do not reach it)."""
        self.packed_weight = pack_weight(self.weight)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._gemm(input, self.bias)

    def project(self, input: torch.Tensor) -> torch.Tensor:
        """input @ weight.T without the bias (for a caller that fuses the bias into what follows)."""
        return self._gemm(input, None)

    def _gemm(self, input: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        packed = self.packed_weight
        if packed is None or input.is_cuda or input.dtype != torch.float32 or input.dim() < 2:
            return linear(input, self.weight, bias)
        rows = input.reshape(-1, input.shape[-1])
        if rows.shape[0] < PACKED_MIN_ROWS:
            return linear(rows, self.weight, bias).view(*input.shape[:-1], self.out_features)
        out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), packed, bias, "none", [], "")
        return out.view(*input.shape[:-1], self.out_features)


def pack_linear_weights(model: nn.Module) -> int:
    """Give every fastx Linear of a CPU float32 model a packed weight copy; returns how many.

    Batched decode and prefill run oneDNN's GEMM (see the module docstring), at the cost of a
    second copy of the projection weights. Raises ValueError (before packing any) for a model
    that is not float32 on the CPU.
    """
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
            raise ValueError(
                f"pack_weights: expected a float32 model on the CPU, got {layer.weight.dtype} on {layer.weight.device}"
            )
    if layers and not ONEDNN_PACKING:
        raise ValueError("pack_weights: this torch build has no oneDNN (mkldnn) linear to run packed weights")
    for layer in layers:
        layer.pack()
    return len(layers)
