"""Decode matmul on GGUF blocks: fastx's split-K quant_matmul vs a bf16 cuBLAS F.linear of the same shape.

Legend: N = out_features, K = in_features, QK / BPB = elements / bytes per GGUF block.
Bytes per call, fastx = N * K / QK * BPB        (the quantized weight, read once)
                      + K * 2 + N * 2            (x read, out written; bf16)
Bytes per call, peer  = N * K * 2 + K * 2 + N * 2 (a bf16 weight of the same shape)
Batch-1 decode is bound by reading the weight, so the figure that matters is the time ratio
peer / fastx (`speedup`); a 4-bit format moves ~3.6x fewer bytes than bf16, which bounds it.
Both run in this process on the same GPU, timed by triton.testing.do_bench (median of repeats).
"""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.quant_matmul import GGUF_BLOCK_FORMATS, quant_matmul

NEEDS_CUDA = "the decode matmul is compared with cuBLAS on a CUDA GPU; the CPU interpreter times numpy"
# Llama-7B shapes (N, K): attention q/o projection, MLP up/gate, MLP down.
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]
FORMATS = ["Q4_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
# Byte offsets of the fp16 fields of each block (d, and m / dmin where the format has one).
FP16_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,)}
FP16_FIELDS.update({"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)})


def _random_blocks(fmt: str, n: int, k: int, device: str) -> torch.Tensor:
    """(N, K // QK * BPB) uint8 of valid blocks: random quant bytes, small finite fp16 scales."""
    qk, bpb = GGUF_BLOCK_FORMATS[fmt]
    blocks = torch.randint(0, 256, (n, k // qk, bpb), dtype=torch.uint8, device=device)
    for offset in FP16_FIELDS[fmt]:
        scale = (torch.rand(n, k // qk, device=device) * 1e-3).to(torch.float16)
        blocks[..., offset : offset + 2] = scale.view(torch.uint8).view(n, k // qk, 2)
    return blocks.view(n, -1)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n, k", SHAPES)
def test_decode_gemv_vs_bf16_cublas(benchmark, bench_device, fmt, n, k):
    if bench_device != "cuda":
        pytest.skip(NEEDS_CUDA)
    from triton.testing import do_bench

    qk, bpb = GGUF_BLOCK_FORMATS[fmt]
    qweight = _random_blocks(fmt, n, k, "cuda")
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    fastx_call = lambda: quant_matmul(x, qweight, fmt, n, k)  # noqa: E731
    peer_call = lambda: F.linear(x, dense)  # noqa: E731
    fastx_call()  # compile outside the timed region
    fastx_ms, peer_ms = do_bench(fastx_call), do_bench(peer_call)
    io_bytes = k * 2 + n * 2
    fastx_bytes, peer_bytes = n * (k // qk) * bpb + io_bytes, n * k * 2 + io_bytes
    benchmark.pedantic(lambda: (fastx_call(), torch.cuda.synchronize()), rounds=20, warmup_rounds=2)
    benchmark.extra_info.update(
        {
            "fastx_ms": fastx_ms,
            "cublas_bf16_ms": peer_ms,
            "fastx_GB/s": fastx_bytes / fastx_ms / 1e6,
            "cublas_bf16_GB/s": peer_bytes / peer_ms / 1e6,
            "speedup": peer_ms / fastx_ms,
            "bytes_ratio": peer_bytes / fastx_bytes,
        }
    )
