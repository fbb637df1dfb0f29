"""`quantization=` of from_pretrained / LLM: which CPU weight-only routes exist and how a model gets one.

- "int8": every projection but the MLP's down through torch's dynamic int8 GEMM (fastx.ops.int8_linear),
  from fp32 weights (a GGUF is dequantized to fp32 first).
- "int4": every projection through torch's int4 weight-only GEMM in bf16, the LM head through its int8
  one (fastx.ops.int4_linear). A GGUF keeps its blocks so that Q4_0 / Q4_1 / Q4_K projections reuse the
  file's own 4-bit values; activations between the layers stay in the model's dtype (fp32 by default).
Both are approximate and CPU only; bench/bench_e2e_gguf.py reports their error against fp32.
"""

from __future__ import annotations

import torch

QUANTIZATIONS = ("int8", "int4")


def check_quantization(quantization) -> None:
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization: expected None or one of {QUANTIZATIONS}, got {quantization!r}")


def gguf_dtype(quantization, dtype):
    """The `dtype=` a GGUF loads with under `quantization` when the caller gave none."""
    if dtype is not None or quantization is None:
        return dtype
    # int8 quantizes fp32 weights; int4 reads the file's blocks ("auto" keeps them).
    return torch.float32 if quantization == "int8" else "auto"


def apply_quantization(model, quantization) -> None:
    if quantization == "int8":
        from fastx.ops.int8_linear import quantize_int8

        quantize_int8(model)
    elif quantization == "int4":
        from fastx.ops.int4_linear import quantize_int4

        quantize_int4(model)
