"""RMSNorm kernel (fastx.kernels.rms_norm) against eager PyTorch and transformers' LlamaRMSNorm."""

import pytest
import torch
import torch.nn.functional as F

from fastx.kernels.layer_norm import MAX_FUSED_N
from fastx.kernels.rms_norm import rms_norm
from fastx.testing import assert_matches_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (3, 7), (5, 131), (2, 3, 576), (4, 1000), (2, MAX_FUSED_N + 37)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_eager(device, dtype, shape, with_residual):
    n = shape[-1]
    x = (torch.randn(shape, device=device) * 2).to(dtype)
    w = (torch.rand(n, device=device) + 0.5).to(dtype)
    residual = torch.randn(shape, device=device).to(dtype) if with_residual else None
    h = x if residual is None else x + residual
    ref = F.rms_norm(h.double(), (n,), w.double(), 1e-6)
    eager = F.rms_norm(h, (n,), w, 1e-6)

    out = rms_norm(x, w, 1e-6, residual=residual)
    if with_residual:
        out, residual_out = out
        torch.testing.assert_close(residual_out, h, rtol=0, atol=0)
    assert_matches_reference(out, ref, eager)


def test_rms_norm_matches_transformers_llama_in_fp32(device):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    module = LlamaRMSNorm(80, eps=1e-5).to(device)
    module.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 11, 80, device=device)
    torch.testing.assert_close(rms_norm(x, module.weight.data, 1e-5), module(x).detach())


def test_rms_norm_non_contiguous_and_unweighted(device):
    x = torch.randn(7, 64, 9, device=device).transpose(1, 2)  # (7, 9, 64), columns strided: copied once
    torch.testing.assert_close(rms_norm(x, None, 1e-6), F.rms_norm(x, (64,), None, 1e-6))


def test_rms_norm_rejects_mismatched_devices_and_dtypes():
    x = torch.ones(2, 8)
    with pytest.raises(ValueError, match="weight: expected dtype torch.float32"):
        rms_norm(x, torch.ones(8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="weight: expected shape"):
        rms_norm(x, torch.ones(2, 8))
    with pytest.raises(ValueError, match="residual: expected shape"):
        rms_norm(x, torch.ones(8), residual=torch.ones(8))
    meta = torch.ones(8, device="meta")
    with pytest.raises(ValueError, match="expected all tensors on one device"):
        rms_norm(x, meta)
