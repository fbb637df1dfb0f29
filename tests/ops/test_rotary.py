"""fastx.ops.rotary_embedding: leading dims, both backends, and agreement with transformers."""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import fastx.ops as ops
from fastx.ops.rotary import rotary_embedding


@pytest.fixture(params=["torch", "triton"])
def backend(request, monkeypatch):
    """Run each test on eager PyTorch and on the Triton kernel (the interpreter on a CPU)."""
    monkeypatch.setenv("FASTX_BACKEND", request.param)
    return request.param


def _cos_sin(rotary_dim, n_positions, device):
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim)
    angles = torch.arange(n_positions, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_embedding_matches_transformers_batched(device, backend, dtype):
    """(B, S, N, D) layout with (B, S) positions, as a padded batch would give."""
    batch, seq, n_heads, n_key_heads, head_dim = 2, 5, 3, 1, 80
    q = torch.randn(batch, seq, n_heads, head_dim, device=device).to(dtype)
    k = torch.randn(batch, seq, n_key_heads, head_dim, device=device).to(dtype)
    cos, sin = _cos_sin(head_dim, 32, device)
    positions = torch.stack([torch.arange(seq), torch.arange(7, 7 + seq)]).to(device)
    q_out, k_out = rotary_embedding(q, k, cos, sin, positions)
    assert q_out.shape == q.shape and k_out.shape == k.shape and q_out.dtype == dtype

    full_cos = torch.cat([cos[positions], cos[positions]], -1)  # (B, S, D), fp32
    full_sin = torch.cat([sin[positions], sin[positions]], -1)
    q_hf, k_hf = apply_rotary_pos_emb(q.float(), k.float(), full_cos, full_sin, unsqueeze_dim=2)
    # fp32 math on both sides; bf16 output is that value rounded once (half an ulp apart at most).
    tol = {} if dtype == torch.float32 else {"rtol": 4e-3, "atol": 4e-3}
    torch.testing.assert_close(q_out, q_hf.to(dtype), **tol)
    torch.testing.assert_close(k_out, k_hf.to(dtype), **tol)


def test_rotary_embedding_partial_without_key(device, backend):
    q = torch.randn(6, 2, 64, device=device)
    cos, sin = _cos_sin(16, 10, device)  # Pythia-style: 16 of 64 dims rotated
    positions = torch.tensor([0, 1, 2, 9, 9, 4], device=device, dtype=torch.int32)
    q_out, k_out = rotary_embedding(q, None, cos, sin, positions)
    assert k_out is None
    torch.testing.assert_close(q_out[..., 16:], q[..., 16:], rtol=0, atol=0)
    full_cos = torch.cat([cos[positions.long()]] * 2, -1)
    full_sin = torch.cat([sin[positions.long()]] * 2, -1)
    q_hf, _ = apply_rotary_pos_emb(q[..., :16], q[..., :16], full_cos, full_sin, unsqueeze_dim=1)
    torch.testing.assert_close(q_out[..., :16], q_hf)


def test_rotary_embedding_backends_agree(device, monkeypatch):
    q = torch.randn(11, 4, 32, device=device).to(torch.bfloat16)
    k = torch.randn(11, 2, 32, device=device).to(torch.bfloat16)
    cos, sin = _cos_sin(32, 16, device)
    positions = torch.randint(0, 16, (11,), device=device)
    outs = {}
    for name in ("torch", "triton"):
        monkeypatch.setenv("FASTX_BACKEND", name)
        outs[name] = rotary_embedding(q, k, cos, sin, positions)
    # Both compute in fp32 and round once: equal up to fp32 rounding order (fma on a GPU).
    for a, b in zip(outs["torch"], outs["triton"]):
        torch.testing.assert_close(a, b, rtol=8e-3, atol=8e-3)


@pytest.mark.parametrize(
    "q_shape, k_shape, pos_shape, cos_cols, message",
    [
        ((4, 2, 16), (4, 1, 16), (3,), 8, r"positions: expected shape \(4,\) \(query's leading dims\), got \(3,\)"),
        ((4, 2, 16), (5, 1, 16), (4,), 8, r"key: expected leading dims \(4,\)"),
        ((4, 2, 15), (4, 1, 15), (4,), 7, "q: expected an even head dim, got 15"),
        ((4, 2, 16), (4, 1, 16), (4,), 9, r"cos: expected at most 8 columns \(head dim 16 / 2\), got 9"),
        ((16,), None, (), 8, r"query: expected shape \(..., heads, head_dim\)"),
    ],
)
def test_rotary_embedding_rejects_bad_arguments(backend, q_shape, k_shape, pos_shape, cos_cols, message):
    cos = torch.ones(10, cos_cols)
    k = torch.ones(k_shape) if k_shape else None
    with pytest.raises(ValueError, match=message):
        rotary_embedding(torch.ones(q_shape), k, cos, cos, torch.zeros(pos_shape, dtype=torch.int64))


def test_rotary_angles_once_per_step_equal_per_call_positions(device, backend):
    """What a model does: the angles prepared once (rotary_angles) give the same rotation as positions."""
    q = torch.randn(7, 5, 64, device=device)  # q and k heads side by side, as a fused qkv row holds them
    cos, sin = _cos_sin(48, 40, device)  # partial rotary: 48 of 64 dims
    positions = torch.tensor([3, 0, 39, 5, 5, 12, 1], device=device)
    angles = ops.rotary_angles(cos, sin, positions)
    if backend == "torch":  # eager: rows gathered here, once
        assert angles.positions is None and angles.cos.shape == (7, 24)
    else:  # the kernel gathers rows itself: the tables pass through
        assert angles.cos is cos and angles.positions is positions
    expected, _ = rotary_embedding(q, None, cos, sin, positions)
    out, _ = rotary_embedding(q, None, *angles)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # Rows given per token work on either backend (the kernel reads token t's row t).
    out_rows, _ = rotary_embedding(q, None, cos[positions], sin[positions], None)
    torch.testing.assert_close(out_rows, expected, rtol=0, atol=0)


def test_rotary_embedding_rows_without_positions_must_match_tokens(backend):
    cos, sin = _cos_sin(16, 8, "cpu")
    with pytest.raises(ValueError, match=r"cos: with positions=None, expected one row per token, shape \(4,\)"):
        rotary_embedding(torch.ones(4, 2, 16), None, cos, sin, None)
