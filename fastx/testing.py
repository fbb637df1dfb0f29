"""The correctness rule fastx holds its kernels to (NUMERICS.md), importable by any test suite.

fp32 results must match eager PyTorch at torch.testing's defaults. For fp16 and bf16 a fixed
tolerance is either too loose or too tight, so the kernel is compared with a high-precision
reference *and* with eager PyTorch computed in the same low precision: the kernel may be at
most twice as far from the reference as eager PyTorch is, plus a small floor (the rule
FlashAttention's own tests use).

`self_check` runs every fastx.ops op through its Triton kernel and through eager PyTorch on a few
awkward shapes and dtypes and judges them by that rule: `fastx kernels --check` runs it, on a GPU
natively and on a CPU under Triton's interpreter.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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


# ---------------------------------------------------------------------------------------------
# The self-check: every op's Triton path against eager PyTorch
# ---------------------------------------------------------------------------------------------
def _check_cases(device: str) -> dict[str, Callable]:
    """op name -> make(dtype) returning (run(*args), args); run calls fastx.ops on the current backend."""
    import fastx.ops as ops

    def randn(*shape, dtype):
        return torch.randn(*shape, device=device, dtype=dtype)

    def norm_case(shape, strided=False):
        def make(dtype):
            n = shape[-1]
            x = randn(shape[0], 2 * n, dtype=dtype)[:, ::2] if strided else randn(*shape, dtype=dtype)
            return x, randn(n, dtype=dtype), randn(n, dtype=dtype), randn(*x.shape, dtype=dtype)

        return make

    def rope(dtype):
        t, h, k, d = 5, 3, 2, 32
        angles = torch.arange(16, device=device)[:, None] * (
            1.0 / 10000.0 ** (torch.arange(0, d, 2, device=device) / d)
        )
        pos = torch.tensor([0, 3, 15, 7, 1], device=device)
        return randn(t, h, d, dtype=dtype), randn(t, k, d, dtype=dtype), angles.cos(), angles.sin(), pos

    def paged(dtype):
        s, h, k, d, bs, nb = 2, 4, 2, 32, 16, 6
        tables = torch.tensor([[4, 1, 0], [2, 5, 3]], dtype=torch.int32, device=device)
        lens = torch.tensor([5, 37], dtype=torch.int32, device=device)
        caches = randn(nb, bs, k, d, dtype=dtype), randn(nb, bs, k, d, dtype=dtype)
        new_kv = randn(3, k, d, dtype=dtype), randn(3, k, d, dtype=dtype)  # 3 tokens to write first
        return randn(s, h, d, dtype=dtype), *caches, tables, lens, *new_kv

    def varlen(dtype):
        cu = torch.tensor([0, 7, 20], dtype=torch.int32, device=device)
        return randn(20, 4, 32, dtype=dtype), randn(20, 2, 32, dtype=dtype), randn(20, 2, 32, dtype=dtype), cu

    def with_kv_write(q, k_cache, v_cache, tables, lens, key, value):
        kc, vc = k_cache.clone(), v_cache.clone()
        ops.write_kv_cache(key, value, kc, vc, torch.tensor([2, -1, 40], device=q.device))
        return ops.paged_decode_attention(q, kc, vc, tables, lens), kc

    def two(shape_a, shape_b, build):
        return [lambda dtype: build(shape_a, dtype), lambda dtype: build(shape_b, dtype)]

    return {
        "layer_norm": (
            lambda x, w, b, r: ops.layer_norm(x, x.shape[-1:], w, b),
            [norm_case((1, 1)), norm_case((7, 37)), norm_case((3, 300), True)],
        ),
        "add_layer_norm": (lambda x, w, b, r: ops.add_layer_norm(x, r, x.shape[-1:], w, b), [norm_case((5, 130))]),
        "rms_norm": (
            lambda x, w, b, r: ops.rms_norm(x, x.shape[-1:], w, 1e-6),
            [norm_case((1, 1)), norm_case((7, 37)), norm_case((3, 300), True)],
        ),
        "add_rms_norm": (lambda x, w, b, r: ops.add_rms_norm(x, r, x.shape[-1:], w, 1e-6), [norm_case((5, 130))]),
        "gelu": (
            lambda x: (ops.gelu(x), ops.gelu(x, approximate="tanh")),
            two((1,), (7, 37), lambda s, dt: (randn(*s, dtype=dt),)),
        ),
        "bias_gelu": (
            lambda x, b: ops.bias_gelu(x, b),
            two((1, 3), (7, 37), lambda s, dt: (randn(*s, dtype=dt), randn(s[-1], dtype=dt))),
        ),
        "silu": (lambda x: ops.silu(x), two((1,), (7, 37), lambda s, dt: (randn(*s, dtype=dt),))),
        "silu_and_mul": (lambda x: ops.silu_and_mul(x), two((1, 2), (7, 74), lambda s, dt: (randn(*s, dtype=dt),))),
        "rotary_embedding": (lambda q, k, c, s, p: ops.rotary_embedding(q, k, c, s, p), [rope]),
        "scaled_dot_product_attention": (
            lambda q, k, v: (
                ops.scaled_dot_product_attention(q, k, v),
                ops.scaled_dot_product_attention(q, k, v, is_causal=True),
            ),
            [lambda dt: tuple(randn(1, 2, 17, 32, dtype=dt) for _ in range(3))],
        ),
        "varlen_attention": (lambda q, k, v, cu: ops.varlen_attention(q, k, v, cu, cu, 13, 13, causal=True), [varlen]),
        "conv2d (depthwise)": (
            lambda x, w, b: ops.conv2d(x, w, b, padding=1, groups=x.shape[1]),
            [lambda dt: (randn(1, 6, 5, 7, dtype=dt), randn(6, 1, 3, 3, dtype=dt), randn(6, dtype=dt))],
        ),
        "paged_decode_attention": (with_kv_write, [paged]),
    }


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def self_check(device: str, dtypes: list[str] | None = None, log: Callable[[str], None] = print) -> bool:
    """Run every op on the Triton path and eagerly; log one PASS/FAIL line per op; True if all pass.

    On a CPU, TRITON_INTERPRET=1 must have been set before fastx.kernels was imported.
    """
    from fastx.ops._backend import forced_backend

    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    chosen = [names[d] for d in (dtypes or ["fp32", "fp16", "bf16"])]
    all_ok = True
    for op, (run, makers) in _check_cases(device).items():
        failures, cases, start = [], 0, time.perf_counter()
        for dtype in chosen:
            for make in makers:
                torch.manual_seed(0)
                args = make(dtype)
                # fp64 reference inputs; the KV-cache ops accept kernel dtypes only, fp32 is their reference.
                ref = torch.float32 if op == "paged_decode_attention" else torch.float64
                ref_args = tuple(a.to(ref) if a.is_floating_point() else a for a in args)
                try:
                    with forced_backend("triton"):
                        actual = _as_tuple(run(*args))
                    with forced_backend("torch"):
                        eager = _as_tuple(run(*args))
                        reference = _as_tuple(run(*ref_args))
                    for i, (a, r, e) in enumerate(zip(actual, reference, eager)):
                        what = f"{op} {str(dtype).removeprefix('torch.')} {tuple(args[0].shape)} output {i}"
                        assert_matches_reference(a, r, e, what=what)
                except Exception as exc:  # a crash of the kernel is a failure of the check, not of the command
                    failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                cases += 1
        seconds = time.perf_counter() - start
        if failures:
            all_ok = False
            log(f"FAIL  {op:<30} {len(failures)}/{cases} cases: {failures[0]}")
        else:
            log(f"pass  {op:<30} {cases} cases ({seconds:.1f} s)")
    return all_ok
