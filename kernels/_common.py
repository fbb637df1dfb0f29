"""Helpers every launcher in fastx.kernels shares: argument checks and 2-D row views.

Kept free of any knowledge of models or the engine; plain tensors in, plain tensors out.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Triton signature strings for the element types fastx kernels accept, used by the
# ahead-of-time compile report (aot.py) to describe a kernel's pointer arguments.


def checks_values(t: torch.Tensor) -> bool:
    """Whether argument checks may read `t`'s contents: always on the CPU (free); on a GPU only with
    FASTX_DEBUG=1, because reading device memory stalls the host until the GPU catches up (and
    breaks CUDA-graph capture)."""
    return t.device.type == "cpu" or os.environ.get("FASTX_DEBUG", "0").strip() not in ("", "0")


def check_float(name: str, t: torch.Tensor) -> None:
    """Reject tensors whose dtype no fastx kernel computes in."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name}: expected dtype float32, float16 or bfloat16, got {t.dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """All given tensors (None ones skipped) must live on one device."""
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {k: v.device for k, v in present.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"expected all tensors on one device, got {listing}")


def check_same_dtype(reference_name: str, reference: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Weights, biases and residuals must share the input's dtype (no silent promotion)."""
    for name, t in tensors.items():
        if t is not None and t.dtype != reference.dtype:
            raise ValueError(f"{name}: expected dtype {reference.dtype} (the dtype of {reference_name}), got {t.dtype}")


def check_vector(name: str, t: torch.Tensor | None, length: int) -> None:
    """A per-feature parameter (weight, bias) must be 1-D of the feature count."""
    if t is not None and (t.dim() != 1 or t.shape[0] != length):
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(t.shape)}")


def as_rows(x: torch.Tensor, n_cols: int) -> torch.Tensor:
    """View x as (rows, n_cols) with unit stride along the columns.

    Any tensor whose last `n_cols` elements per row are contiguous and whose rows sit at one
    fixed stride (e.g. a slice x[:, :k] or a transposed batch dim) is viewed without a copy;
    anything else is copied once, which is the documented behaviour of every row kernel.
    """
    x2 = x.reshape(-1, n_cols) if x.numel() else x.new_empty((0, n_cols))
    if x2.stride(-1) != 1 and n_cols > 1:
        x2 = x2.contiguous()
    if x2.shape[0] > 1 and x2.stride(0) < n_cols:
        x2 = x2.contiguous()
    return x2


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def on_input_device(launcher: F) -> F:
    """Run a launcher with its first tensor argument's CUDA device current.

    Triton launches on the current device, so a model on cuda:1 would otherwise launch its
    kernels (and allocate their outputs' streams) on cuda:0. CPU tensors, and the common case
    of a tensor already on the current device, pass straight through.
    """

    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if first is None or not first.is_cuda or first.device.index == torch.cuda.current_device():
            return launcher(*args, **kwargs)
        with torch.cuda.device(first.device):
            return launcher(*args, **kwargs)

    guarded.runs_on_input_device = True
    return guarded  # type: ignore[return-value]
