"""Which dtype a model loads in: what the caller asks for, else the device's own default.

The default follows the hardware, the same in the Python API and the CLI:
- CUDA: the checkpoint's half-precision dtype (config.json's `dtype`/`torch_dtype` when it is
  fp16 or bf16), else bf16; fp16 on a GPU without bf16 (before Ampere).
- CPU: fp32, unless the CPU has bf16 matrix units (Intel AMX), where bf16 GEMMs run several
  times faster than fp32 ones (~5x measured on an AMX build machine).
  NOTE: AVX-512 BF16 without AMX (AMD Zen 4) is not counted as matrix units, although one
  (512 x 576) @ (576 x 1536) GEMM measured 113 GFLOP/s in bf16 against 36 in fp32 on such a
  2-core machine; whether that carries to end-to-end decode is not measured yet.
`dtype=` always wins; "auto" is the checkpoint's own dtype, as in transformers.
"""

from __future__ import annotations

from typing import Any

import torch

DTYPE_NAMES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "float": torch.float32,
    "half": torch.float16,
}
HALF_DTYPES = (torch.float16, torch.bfloat16)


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs with AMX tiles (Sapphire Rapids and later), as torch's own check reports them."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def checkpoint_dtype(config_data: dict[str, Any]) -> torch.dtype | None:
    """The dtype config.json declares (`dtype` in transformers 5, `torch_dtype` before), or None."""
    name = config_data.get("dtype") or config_data.get("torch_dtype")
    return DTYPE_NAMES.get(str(name).removeprefix("torch.")) if name else None


def default_dtype(device: torch.device | str | None, config_data: dict[str, Any]) -> torch.dtype:
    """The dtype a model loads in on `device` when the caller names none (module docstring)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        declared = checkpoint_dtype(config_data)
        if declared in HALF_DTYPES and (declared != torch.bfloat16 or torch.cuda.is_bf16_supported()):
            return declared
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16_matrix_units():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(
    dtype: torch.dtype | str | None, config_data: dict[str, Any], device: torch.device | str | None = None
) -> torch.dtype:
    """torch.dtype, its name, "auto" (the checkpoint's own) or None (the device's default)."""
    if dtype is None:
        return default_dtype(device, config_data)
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, *HALF_DTYPES):
            raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype}")
        return dtype
    if dtype == "auto":
        return checkpoint_dtype(config_data) or torch.float32
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype: expected a torch dtype, its name or 'auto', got {dtype!r}")
