"""RMSNorm over the last dimension (Llama family), optionally fused with a residual add.

The kernel is layer_norm.py's `_norm_fwd_kernel` with IS_RMS_NORM=True: the two norms differ
only in the mean subtraction, and one kernel keeps the streaming path and its tests in one place.
"""

from __future__ import annotations

import torch

from fastx.kernels.aot import AotConfig
from fastx.kernels.layer_norm import _norm, norm_aot_configs


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    residual: torch.Tensor | None = None,
):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dimension, statistics in fp32.

    With `residual`, returns (rms_norm(x + residual), x + residual) in one pass (vLLM's
    fused_add_rms_norm). Non-strided rows are copied once, as in layer_norm.
    """
    return _norm(x, weight, None, eps, residual, is_rms_norm=True)


def aot_configs() -> list[AotConfig]:
    return norm_aot_configs(is_rms_norm=True)
