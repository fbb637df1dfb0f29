"""GELU (erf / tanh, +bias), SiLU, SwiGLU gating: fastx's Triton kernel vs eager PyTorch vs torch.compile.

Bytes per call (elem = bytes per element of the input dtype):
    gelu, silu:    rows * N * elem * 2            (read x, write y)   [+ N * elem for the bias]
    silu_and_mul:  rows * d * elem * 3            (read gate and up, write d outputs)
"""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.activations import gelu, silu, silu_and_mul

ON_CUDA = torch.cuda.is_available()
# Rows: a 4096-token prefill on a GPU; 1/16 of it on the CPU, where only the eager rows run and
# the whole file must finish in seconds. N: BERT/GPT-2 MLP (3072), Llama-2-7B MLP (11008).
ROWS = 4096 if ON_CUDA else 256
SIZES = [(ROWS, 3072), (ROWS, 11008)]
# silu_and_mul (rows, d): Llama-2-7B, and Llama-3-8B's 14336 over 8192 tokens (input 2 * d wide).
GLU_SIZES = [(ROWS, 11008), (2 * ROWS, 14336)]
IMPLS = ["triton", "eager", "compile"]


def _dtype():
    return torch.bfloat16 if ON_CUDA else torch.float32


def _elem(dtype):
    return torch.finfo(dtype).bits // 8


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rows, n", SIZES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gelu(run_impl, bench_device, impl, rows, n, approximate, with_bias):
    dtype = _dtype()
    x = torch.randn(rows, n, device=bench_device, dtype=dtype)
    b = torch.randn(n, device=bench_device, dtype=dtype) if with_bias else None
    if impl == "triton":
        fn = lambda: gelu(x, approximate, bias=b)  # noqa: E731
    elif with_bias:
        fn = lambda: F.gelu(x + b, approximate=approximate)  # noqa: E731
    else:
        fn = lambda: F.gelu(x, approximate=approximate)  # noqa: E731
    run_impl(impl, fn, bytes_moved=rows * n * _elem(dtype) * 2 + (n * _elem(dtype) if with_bias else 0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rows, n", SIZES)
def test_silu(run_impl, bench_device, impl, rows, n):
    dtype = _dtype()
    x = torch.randn(rows, n, device=bench_device, dtype=dtype)
    fn = (lambda: silu(x)) if impl == "triton" else (lambda: F.silu(x))
    run_impl(impl, fn, bytes_moved=rows * n * _elem(dtype) * 2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rows, d", GLU_SIZES)
def test_silu_and_mul(run_impl, bench_device, impl, rows, d):
    dtype = _dtype()
    x = torch.randn(rows, 2 * d, device=bench_device, dtype=dtype)
    fn = (lambda: silu_and_mul(x)) if impl == "triton" else (lambda: F.silu(x[:, :d]) * x[:, d:])
    run_impl(impl, fn, bytes_moved=rows * d * _elem(dtype) * 3)
