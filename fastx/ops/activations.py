"""Activation ops with torch.nn.functional's signatures, plus bias-fused GELU and SwiGLU gating."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastx.kernels import activations as _kernels
from fastx.ops._backend import use_triton

_APPROXIMATE = ("none", "tanh")


def _check_approximate(approximate: str) -> None:
    # torch raises RuntimeError here; fastx raises ValueError on both paths, as its kernels do.
    if approximate not in _APPROXIMATE:
        raise ValueError(f"approximate: expected 'none' or 'tanh', got {approximate!r}")


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """Drop-in for F.gelu (inference: no autograd through the Triton path)."""
    _check_approximate(approximate)
    if not use_triton(input):
        return F.gelu(input, approximate=approximate)
    return _kernels.gelu(input, approximate)


def bias_gelu(input: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(input + bias) with bias of shape (input.shape[-1],); one pass on the Triton path.

    The Triton path keeps input + bias in fp32; eager PyTorch rounds the sum to input's dtype first.
    """
    _check_approximate(approximate)
    if bias.dim() != 1 or input.dim() == 0 or bias.shape[0] != input.shape[-1]:
        last = input.shape[-1] if input.dim() else "?"
        raise ValueError(f"bias: expected shape ({last},), got {tuple(bias.shape)}")
    if not use_triton(input, bias):
        return F.gelu(input + bias, approximate=approximate)
    return _kernels.gelu(input, approximate, bias=bias)


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Drop-in for F.silu; inplace=True writes the result into `input` and returns it, as torch does."""
    if not use_triton(input):
        return F.silu(input, inplace=inplace)
    out = _kernels.silu(input)
    # The kernel writes a fresh contiguous tensor; one copy back keeps input's own strides.
    return input.copy_(out) if inplace else out


def silu_and_mul(input: torch.Tensor) -> torch.Tensor:
    """SwiGLU gating: input (..., 2*d) -> silu(input[..., :d]) * input[..., d:], shape (..., d)."""
    if input.dim() == 0 or input.shape[-1] % 2:
        last = input.shape[-1] if input.dim() else "a 0-d tensor"
        raise ValueError(f"input: expected an even last dimension (gate and up halves), got {last}")
    if not use_triton(input):
        d = input.shape[-1] // 2
        return F.silu(input[..., :d]) * input[..., d:]
    return _kernels.silu_and_mul(input)
