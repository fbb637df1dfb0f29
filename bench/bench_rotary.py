"""Rotary embedding on q and k: fastx's Triton kernel vs eager PyTorch vs torch.compile.

Bytes per call = (T * H * D + T * K * D) * elem * 2      (q and k read, rotated copies written)
                 + 2 * T * (R / 2) * cos_elem            (each token's cos and sin rows read)
"""

import pytest
import torch

from fastx.kernels.rotary import apply_rotary

ON_CUDA = torch.cuda.is_available()
# (T, H, K, D): Llama-3-8B on a 4096-token prefill, SmolLM2-135M on 8192 tokens. The CPU runs
# the eager rows only, on 1/16 of the tokens, so the file finishes in seconds.
SCALE = 1 if ON_CUDA else 16
SIZES = [(4096 // SCALE, 32, 8, 128), (8192 // SCALE, 9, 3, 64)]
IMPLS = ["triton", "eager", "compile"]


def _rotary_eager(x, cos, sin, positions):
    """The kernel's formula in torch ops, fp32 math, one rounding: x (T, N, D), cos/sin (P, R/2)."""
    half = cos.shape[1]
    c = cos[positions][:, None, :]  # (T, 1, R/2)
    s = sin[positions][:, None, :]
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * half :].float()], dim=-1).to(x.dtype)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n_tokens, n_heads, n_key_heads, head_dim", SIZES)
def test_rotary(run_impl, bench_device, impl, n_tokens, n_heads, n_key_heads, head_dim):
    dtype = torch.bfloat16 if ON_CUDA else torch.float32
    q = torch.randn(n_tokens, n_heads, head_dim, device=bench_device, dtype=dtype)
    k = torch.randn(n_tokens, n_key_heads, head_dim, device=bench_device, dtype=dtype)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2, device=bench_device) / head_dim)
    angles = torch.arange(n_tokens, device=bench_device)[:, None] * inv_freq[None, :]  # (P, R/2) fp32
    cos, sin = angles.cos(), angles.sin()
    positions = torch.arange(n_tokens, device=bench_device)
    if impl == "triton":
        fn = lambda: apply_rotary(q, k, cos, sin, positions)  # noqa: E731
    else:
        fn = lambda: (_rotary_eager(q, cos, sin, positions), _rotary_eager(k, cos, sin, positions))  # noqa: E731
    elem, cos_elem = torch.finfo(dtype).bits // 8, torch.finfo(cos.dtype).bits // 8
    bytes_moved = n_tokens * (n_heads + n_key_heads) * head_dim * elem * 2 + 2 * n_tokens * (head_dim // 2) * cos_elem
    run_impl(impl, fn, bytes_moved=bytes_moved)
