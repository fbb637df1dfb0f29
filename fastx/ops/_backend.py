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

import contextlib
import os
from collections.abc import Iterator

import torch

from fastx.kernels import interpreter_enabled

_CHOICES = ("auto", "triton", "torch")


def backend_setting() -> str:
    raw = os.environ.get("FASTX_BACKEND")
    if raw is None:  # the common case, several hundred times per decode step: no parsing
        return "auto"
    value = raw.strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"FASTX_BACKEND: expected one of {', '.join(_CHOICES)}, got {value!r}")
    return value


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


@contextlib.contextmanager
def forced_backend(name: str) -> Iterator[None]:
    """Run fastx.ops on one backend ("triton" or "torch") inside the block; the old setting comes back after.

    Used by the self-check and the kernel benchmarks to run one op both ways in one process.
    """
    if name not in _CHOICES:
        raise ValueError(f"backend: expected one of {', '.join(_CHOICES)}, got {name!r}")
    old = os.environ.get("FASTX_BACKEND")
    os.environ["FASTX_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTX_BACKEND", None)
        else:
            os.environ["FASTX_BACKEND"] = old
