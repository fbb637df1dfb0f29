"""Attention forward: fastx's varlen flash-attention kernel vs torch SDPA (eager) vs torch.compile.

Legend: B = batch, H = heads, L = sequence length, D = head dim.
FLOPs per call = 4 * B * H * L * L * D (two matmuls of 2 * L * L * D each per head), halved
for causal (only the lower triangle is computed). Total tokens B * L stay at 16k and H * D
at 2048, as FlashAttention's own benchmark does. On CUDA, torch SDPA (impl="eager") dispatches
to its FlashAttention-2 backend: the peer the kernel is measured against.
"""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.attention import varlen_attention

TOTAL_TOKENS = 16384
MODEL_DIM = 2048  # H * D
SEQ_LENS = [512, 1024, 2048, 4096, 8192]
IMPLS = ["triton", "eager", "compile"]
# The CPU runs only these eager rows (seq 512, batch 1, D 64): the rest would take minutes.
CPU_ROWS = {(512, 64)}


def _flops(batch, heads, seq, head_dim, causal):
    flops = 4 * batch * heads * seq * seq * head_dim
    return flops // 2 if causal else flops


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seq", SEQ_LENS)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_forward(run_impl, bench_device, impl, seq, head_dim, dtype, causal):
    on_cpu = bench_device != "cuda"
    if on_cpu and impl == "eager" and (seq, head_dim) not in CPU_ROWS:
        pytest.skip("CPU: only the seq-512, D-64, batch-1 eager rows run (the sweep is for a GPU)")
    batch = 1 if on_cpu else TOTAL_TOKENS // seq
    heads = MODEL_DIM // head_dim
    if on_cpu and impl != "eager":
        run_impl(impl, lambda: None)  # skips with the fixture's reason before any allocation
    if impl == "triton":
        # Packed varlen layout (B * L, H, D) with uniform cu_seqlens: what the engine launches.
        q, k, v = (torch.randn(batch * seq, heads, head_dim, device=bench_device, dtype=dtype) for _ in range(3))
        cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=bench_device)
        fn = lambda: varlen_attention(q, k, v, cu, cu, seq, seq, causal=causal)  # noqa: E731
    else:
        q, k, v = (torch.randn(batch, heads, seq, head_dim, device=bench_device, dtype=dtype) for _ in range(3))
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    run_impl(impl, fn, flops=_flops(batch, heads, seq, head_dim, causal))
