"""The correctness rule fastx holds its kernels to (NUMERICS.md), importable by any test suite.

fp32 results must match eager PyTorch at torch.testing's defaults. For fp16 and bf16 a fixed
tolerance is either too loose or too tight, so the kernel is compared with a high-precision
reference *and* with eager PyTorch computed in the same low precision: the kernel may be at
most twice as far from the reference as eager PyTorch is, plus a small floor (the rule
FlashAttention's own tests use).
"""

from __future__ import annotations

import torch

# Absolute floors for the low-precision rule: about one unit in the last place at magnitude ~1.
ATOL_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}


def assert_matches_reference(
    actual: torch.Tensor,
    reference: torch.Tensor,
    eager: torch.Tensor,
    *,
    atol_floor: float | None = None,
    factor: float = 2.0,
    what: str = "kernel",
) -> None:
    """Check `actual` against `reference` (computed in fp32/fp64) with eager's own error as the yardstick.

    fp32 `actual` is compared with torch.testing.assert_close defaults against `eager`; fp16/bf16
    `actual` must satisfy max|actual - reference| <= factor * max|eager - reference| + atol_floor.
    """
    if actual.shape != reference.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != reference {tuple(reference.shape)}")
    if actual.dtype == torch.float32 and atol_floor is None:
        torch.testing.assert_close(actual, eager.to(actual.dtype), msg=lambda m: f"{what} vs eager fp32: {m}")
        return
    if actual.numel() == 0:
        return
    floor = ATOL_FLOOR[actual.dtype] if atol_floor is None else atol_floor
    ref = reference.double()
    err_actual = (actual.double() - ref).abs().max().item()
    err_eager = (eager.double() - ref).abs().max().item()
    bound = factor * err_eager + floor
    if not err_actual <= bound:  # also catches NaN
        raise AssertionError(
            f"{what} ({actual.dtype}): max error {err_actual:.3e} vs reference exceeds "
            f"{factor} x eager's {err_eager:.3e} + {floor:.1e} = {bound:.3e}"
        )


def make_interpreter_round_like_gpu() -> None:
    """Fix two bf16 defects of Triton's CPU interpreter (triton 3.9) so it computes as a GPU does.

    1. fp32 -> bf16 casts truncate (and the explicit `fp_downcast_rounding="rtne"` path drops
       the mantissa carry), so a kernel that is exact on a GPU shows up to 1 ulp of error while
       eager PyTorch shows 1/2. GPUs round to nearest-even; so does the patched cast.
    2. `tl.dot` on bf16 operands multiplies their raw 16-bit patterns as integers (errors of
       ~1e10 on a 16x16 product). A GPU's bf16 MMA multiplies exactly and accumulates in fp32;
       the patched dot widens bf16 to fp32 first, which is that.
    Kernel tests call this once so they judge the kernel, not the emulator. It changes only the
    interpreter, in the calling process; GPU code is untouched.
    """
    import numpy as np
    from triton.runtime import interpreter

    if getattr(interpreter, "_fastx_rounds_like_gpu", False):
        return
    import triton.language as tl

    convert = interpreter._convert_float

    def convert_rounding_to_nearest_even(input, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            bits = np.ascontiguousarray(input, dtype=np.float32).view(np.uint32).astype(np.uint64)
            rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            nan = np.isnan(np.asarray(input, dtype=np.float32))
            out = np.where(nan, 0x7FC0, rounded).astype(np.uint16)
            return out.reshape(np.shape(input))
        return convert(input, input_dtype, output_dtype, rounding_mode)

    interpreter._convert_float = convert_rounding_to_nearest_even

    create_dot = interpreter.InterpreterBuilder.create_dot

    def bf16_as_fp32(t):
        bits = np.ascontiguousarray(t.data).view(np.uint16).astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot_widening_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.dtype.scalar == tl.bfloat16:
            a, b = bf16_as_fp32(a), bf16_as_fp32(b)
        return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = create_dot_widening_bf16
    interpreter._fastx_rounds_like_gpu = True
