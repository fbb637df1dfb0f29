"""Depthwise 7x7 convolution (ConvNeXt): fastx's Triton kernel vs eager F.conv2d vs torch.compile.

Bytes per call = (N*C*H*W input + N*C*H*W output + C*K*K weight + C bias) * elem: each tensor
read or written once; the K*K-fold reuse of the input within a window is served by the caches.
Every implementation works on a channels_last input (the layout a ConvNeXt block keeps).
"""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.depthwise_conv import depthwise_conv2d

# (N, C, H, W) of ConvNeXt-T stages 1-4 at 224x224; ConvNeXt-B widens C to 128, 256, 512, 1024.
SHAPES = [(32, 96, 56, 56), (32, 192, 28, 28), (32, 384, 14, 14), (32, 768, 7, 7), (32, 128, 56, 56), (32, 1024, 7, 7)]
K = 7
IMPLS = ["triton", "eager", "compile"]
# Eager CPU rows run at batch 8 so the whole file stays within ~30 s on a 2-core machine.
CPU_BATCH = 8


def _bytes(n, c, h, w, k, dtype):
    elem = torch.finfo(dtype).bits // 8
    return (2 * n * c * h * w + c * k * k + c) * elem


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_conv(run_impl, bench_device, impl, shape):
    n, c, h, w = shape
    on_cuda = bench_device == "cuda"
    if not on_cuda:
        n = CPU_BATCH
    dtype = torch.bfloat16 if on_cuda else torch.float32
    x = torch.randn(n, c, h, w, device=bench_device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, 1, K, K, device=bench_device, dtype=dtype)
    bias = torch.randn(c, device=bench_device, dtype=dtype)
    if impl == "triton":
        fn = lambda: depthwise_conv2d(x, weight, bias)  # noqa: E731
    else:
        fn = lambda: F.conv2d(x, weight, bias, padding=K // 2, groups=c)  # noqa: E731
    run_impl(impl, fn, bytes_moved=_bytes(n, c, h, w, K, dtype))
