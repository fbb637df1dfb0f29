"""Which implementation an op runs: the Triton kernel or eager PyTorch.

- CUDA tensors run the Triton kernels.
- CPU tensors run eager PyTorch by default (the interpreter is a correctness tool, not a
  fast path).
- FASTX_BACKEND=triton forces the kernels everywhere; on the CPU that needs Triton's
  interpreter, and when the interpreter is off this raises instead of falling back.
- FASTX_BACKEND=torch forces eager PyTorch everywhere.

The variable is read at each call, so a test or a user can switch it without re-importing.
"""

from __future__ import annotations

import os

import torch

_CHOICES = ("auto", "triton", "torch")


def backend_setting() -> str:
    raw = os.environ.get("FASTX_BACKEND")
    if raw is None:  # the common case, several hundred times per decode step: no parsing
        return "auto"
    value = raw.strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"FASTX_BACKEND: expected one of {', '.join(_CHOICES)}, got {value!r}")
    return value


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when this call should launch the Triton kernel for these tensors."""
    setting = backend_setting()
    if setting == "torch":
        return False
    on_cuda = all(t is None or t.is_cuda for t in tensors)
    if setting == "auto":
        return on_cuda
    if not on_cuda and not interpreter_enabled():
        raise RuntimeError(
            "FASTX_BACKEND=triton with CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before importing fastx (or use CUDA tensors, or FASTX_BACKEND=torch)"
        )
    return True
