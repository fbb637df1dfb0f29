"""fastx.ops norm functions: drop-in for torch.nn.functional on both backends."""

import pytest
import torch
import torch.nn.functional as F

import fastx.ops as ops

BACKENDS = ["torch", "triton"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", request.param)
    return request.param


def test_layer_norm_multi_dim_normalized_shape(device, backend):
    x = torch.randn(2, 5, 3, 7, device=device)
    w, b = torch.randn(3, 7, device=device), torch.randn(3, 7, device=device)
    torch.testing.assert_close(ops.layer_norm(x, (3, 7), w, b, 1e-5), F.layer_norm(x, (3, 7), w, b, 1e-5))
    torch.testing.assert_close(ops.layer_norm(x, [7]), F.layer_norm(x, [7]))


def test_rms_norm_default_eps_is_torch_finfo_eps(device, backend):
    x = torch.randn(4, 33, device=device) * 1e-3
    torch.testing.assert_close(ops.rms_norm(x, (33,)), F.rms_norm(x, (33,)))
    w = torch.randn(33, device=device)
    torch.testing.assert_close(ops.rms_norm(x, 33, w, 1e-6), F.rms_norm(x, (33,), w, 1e-6))


def test_add_norms_return_normed_and_new_residual(device, backend):
    x, r = torch.randn(3, 4, 48, device=device), torch.randn(3, 4, 48, device=device)
    w, b = torch.randn(48, device=device), torch.randn(48, device=device)
    y, s = ops.add_layer_norm(x, r, (48,), w, b)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, F.layer_norm(x + r, (48,), w, b))
    y, s = ops.add_rms_norm(x, r, (48,), w, 1e-6)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, F.rms_norm(x + r, (48,), w, 1e-6))


def test_normalized_shape_mismatch_is_a_value_error(backend):
    with pytest.raises(
        ValueError, match=r"normalized_shape: expected the trailing dimensions of input \(2, 8\), got \(4,\)"
    ):
        ops.layer_norm(torch.ones(2, 8), (4,))
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        ops.rms_norm(torch.ones(2, 8), (8,), torch.ones(4))
    with pytest.raises(ValueError, match="residual: expected shape"):
        ops.add_rms_norm(torch.ones(2, 8), torch.ones(8), (8,))
