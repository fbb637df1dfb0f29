"""LayerNorm / RMSNorm (+ residual): fastx's Triton kernel vs eager PyTorch vs torch.compile.

Bytes per call = rows * N * elem * (reads: x [+ residual] + writes: y [+ residual_out])
                 + N * elem per weight/bias vector (read once, amortised over rows).
"""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.layer_norm import layer_norm
from fastx.kernels.rms_norm import rms_norm

# (rows, N): BERT-base tokens, Llama-7B hidden, a long row on the streaming path.
SIZES = [(4096, 768), (4096, 4096), (512, 32768)]
IMPLS = ["triton", "eager", "compile"]


def _bytes(rows, n, dtype, residual, n_vectors):
    elem = torch.finfo(dtype).bits // 8
    streams = 4 if residual else 2
    return rows * n * elem * streams + n_vectors * n * elem


def _inputs(device, rows, n, residual):
    """x (rows, N), the residual or None, and two (N,) vectors, in the dtype benchmarked on `device`."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(rows, n, device=device, dtype=dtype)
    r = torch.randn_like(x) if residual else None
    return dtype, x, r, torch.randn(n, device=device, dtype=dtype), torch.randn(n, device=device, dtype=dtype)


# Every case: each implementation, each size, with and without the fused residual add.
CASES = pytest.mark.parametrize(
    "impl, rows, n, residual", [(i, rows, n, res) for i in IMPLS for rows, n in SIZES for res in (False, True)]
)


@CASES
def test_layer_norm(run_impl, bench_device, impl, rows, n, residual):
    dtype, x, r, w, b = _inputs(bench_device, rows, n, residual)
    if impl == "triton":
        fn = lambda: layer_norm(x, w, b, residual=r)  # noqa: E731
    elif residual:
        fn = lambda: (F.layer_norm(x + r, (n,), w, b), x + r)  # noqa: E731
    else:
        fn = lambda: F.layer_norm(x, (n,), w, b)  # noqa: E731
    run_impl(impl, fn, bytes_moved=_bytes(rows, n, dtype, residual, 2))


@CASES
def test_rms_norm(run_impl, bench_device, impl, rows, n, residual):
    dtype, x, r, w, _ = _inputs(bench_device, rows, n, residual)
    if impl == "triton":
        fn = lambda: rms_norm(x, w, 1e-6, residual=r)  # noqa: E731
    elif residual:
        fn = lambda: (F.rms_norm(x + r, (n,), w, 1e-6), x + r)  # noqa: E731
    else:
        fn = lambda: F.rms_norm(x, (n,), w, 1e-6)  # noqa: E731
    run_impl(impl, fn, bytes_moved=_bytes(rows, n, dtype, residual, 1))
