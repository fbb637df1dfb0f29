"""Rotary kernel (fastx.kernels.rotary) against transformers' apply_rotary_pos_emb and eager PyTorch."""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from fastx.kernels.rotary import apply_rotary
from fastx.testing import assert_matches_reference

MAX_POSITIONS = 61  # a prime, so positions differ from token indices


def _cos_sin(rotary_dim, device, dtype=torch.float32, base=10000.0):
    """(P, R/2) caches as Llama builds them: angle[p, i] = p / base^(2i/R)."""
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim)
    angles = torch.arange(MAX_POSITIONS, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _eager(x, cos, sin, positions, compute_dtype):
    """The formula of the module docstring in torch ops, in compute_dtype, rounded to x's dtype."""
    half = cos.shape[1]
    c = cos[positions].to(compute_dtype)[:, None, :]  # (T, 1, R/2)
    s = sin[positions].to(compute_dtype)[:, None, :]
    x1, x2 = x[..., :half].to(compute_dtype), x[..., half : 2 * half].to(compute_dtype)
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * half :].to(compute_dtype)], dim=-1)
    return out.to(x.dtype)


def _transformers(q, k, cos, sin, positions):
    """transformers' Llama rotary on the first R dims (it rotates whole heads), the rest passed through."""
    rotary_dim = 2 * cos.shape[1]
    full_cos = torch.cat([cos[positions], cos[positions]], dim=-1).to(q.dtype)  # (T, R)
    full_sin = torch.cat([sin[positions], sin[positions]], dim=-1).to(q.dtype)
    q_rot, k_rot = apply_rotary_pos_emb(q[..., :rotary_dim], k[..., :rotary_dim], full_cos, full_sin, unsqueeze_dim=1)
    return torch.cat([q_rot, q[..., rotary_dim:]], -1), torch.cat([k_rot, k[..., rotary_dim:]], -1)


def _check(out, x, cos, sin, positions, what):
    assert out.dtype == x.dtype and out.shape == x.shape
    reference = _eager(x, cos, sin, positions, torch.float64)
    assert_matches_reference(out, reference, _eager(x, cos, sin, positions, x.dtype), what=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# H and K independent (GQA and more key than query heads); the interpreter's cost grows with
# T x head blocks, so the 37-token cases take the two mixed head counts.
@pytest.mark.parametrize("n_heads, n_key_heads, n_tokens", [(1, 1, 1), (3, 3, 1), (3, 1, 37), (1, 3, 37)])
@pytest.mark.parametrize("head_dim", [32, 64, 80, 128])
def test_rotary_matches_transformers(device, head_dim, n_heads, n_key_heads, n_tokens, dtype):
    q = torch.randn(n_tokens, n_heads, head_dim, device=device).to(dtype)
    k = torch.randn(n_tokens, n_key_heads, head_dim, device=device).to(dtype)
    cos, sin = _cos_sin(head_dim, device)  # fp32 caches, also for bf16 q (compute in fp32)
    positions = torch.randint(0, MAX_POSITIONS, (n_tokens,), device=device)
    q_out, k_out = apply_rotary(q, k, cos, sin, positions)

    q_hf, k_hf = _transformers(q, k, cos, sin, positions)
    if dtype == torch.float32:
        torch.testing.assert_close(q_out, q_hf)
        torch.testing.assert_close(k_out, k_hf)
    else:  # transformers rounds cos, sin and each product to bf16: the 2x rule against fp64 judges both
        ref_q, ref_k = (_eager(t, cos, sin, positions, torch.float64) for t in (q, k))
        assert_matches_reference(q_out, ref_q, q_hf, what="q vs transformers")
        assert_matches_reference(k_out, ref_k, k_hf, what="k vs transformers")
    _check(q_out, q, cos, sin, positions, "q")
    _check(k_out, k, cos, sin, positions, "k")


CACHE_DTYPES = [
    (torch.float16, torch.float32),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float32, torch.float32),
]


@pytest.mark.parametrize("dtype, cos_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("head_dim, rotary_dim", [(80, 32), (64, 16), (128, 64), (6, 2), (8, 0)])
def test_rotary_partial_and_cache_dtypes(device, head_dim, rotary_dim, dtype, cos_dtype):
    """Partial rotary (Phi-2: 32 of 80, Pythia: 16 of 64), dims R..D unchanged; cos/sin in q's dtype or fp32."""
    q = torch.randn(5, 3, head_dim, device=device).to(dtype)
    k = torch.randn(5, 2, head_dim, device=device).to(dtype)
    cos, sin = _cos_sin(rotary_dim, device, cos_dtype)
    positions = torch.tensor([0, 60, 7, 7, 13], device=device, dtype=torch.int32)
    q_out, k_out = apply_rotary(q, k, cos, sin, positions)
    _check(q_out, q, cos, sin, positions, "q")
    _check(k_out, k, cos, sin, positions, "k")
    torch.testing.assert_close(q_out[..., rotary_dim:], q[..., rotary_dim:], rtol=0, atol=0)


def test_rotary_reads_fused_qkv_in_place(device):
    """q and k as strided views of a fused (T, (H + 2K) * D) projection; no key at all also works."""
    n_tokens, n_heads, n_key_heads, head_dim = 7, 3, 2, 64
    qkv = torch.randn(n_tokens, (n_heads + 2 * n_key_heads) * head_dim, device=device)
    q = qkv[:, : n_heads * head_dim].view(n_tokens, n_heads, head_dim)
    k = qkv[:, n_heads * head_dim : (n_heads + n_key_heads) * head_dim].view(n_tokens, n_key_heads, head_dim)
    assert not q.is_contiguous() and not k.is_contiguous()
    cos, sin = _cos_sin(head_dim, device)
    positions = torch.arange(3, 3 + n_tokens, device=device)
    before = qkv.clone()
    q_out, k_out = apply_rotary(q, k, cos, sin, positions)
    torch.testing.assert_close(q_out, _eager(q, cos, sin, positions, torch.float32))
    torch.testing.assert_close(k_out, _eager(k, cos, sin, positions, torch.float32))
    torch.testing.assert_close(qkv, before, rtol=0, atol=0)  # out of place

    strided_heads = torch.randn(n_tokens, 2 * n_heads, head_dim, device=device)[:, ::2]  # head stride 2 * D
    q_only, none = apply_rotary(strided_heads, None, cos[::2], sin[::2], positions // 2)  # strided cache rows too
    assert none is None
    torch.testing.assert_close(q_only, _eager(strided_heads, cos[::2], sin[::2], positions // 2, torch.float32))
    transposed = torch.randn(n_tokens, head_dim, n_heads, device=device).transpose(1, 2)  # D not unit-stride: copied
    torch.testing.assert_close(
        apply_rotary(transposed, None, cos, sin, positions)[0], _eager(transposed, cos, sin, positions, torch.float32)
    )


def test_rotary_empty_input(device):
    cos, sin = _cos_sin(16, device)
    q_out, k_out = apply_rotary(
        torch.empty(0, 2, 16, device=device),
        torch.empty(0, 1, 16, device=device),
        cos,
        sin,
        torch.empty(0, dtype=torch.int64, device=device),
    )
    assert q_out.shape == (0, 2, 16) and k_out.shape == (0, 1, 16)


OUT_OF_RANGE = "positions: expected values in [0, 10) (rows of cos)"


def _call(q=(4, 2, 16), k=(4, 1, 16), cos=(10, 8), positions=None, q_dtype=torch.float32, pos_dtype=torch.int64):
    cos_t = torch.ones(cos)
    positions = torch.zeros(4, dtype=pos_dtype) if positions is None else positions
    apply_rotary(torch.ones(q, dtype=q_dtype), torch.ones(k) if k else None, cos_t, cos_t.clone(), positions)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"q": (4, 2, 15), "k": (4, 1, 15)}, "q: expected an even head dim, got 15"),
        ({"cos": (10, 9)}, "cos: expected at most 8 columns (head dim 16 / 2), got 9"),
        ({"k": (3, 1, 16)}, "k: expected 4 tokens (the query's), got shape (3, 1, 16)"),
        ({"k": (4, 1, 8)}, "k: expected head dim 16 (the query's), got shape (4, 1, 8)"),
        ({"q": (4, 32)}, "q: expected 3 dimensions (tokens, heads, head_dim), got shape (4, 32)"),
        ({"q_dtype": torch.float16}, "k: expected dtype torch.float16 (the dtype of q), got torch.float32"),
        ({"pos_dtype": torch.float32}, "positions: expected an int32 or int64 tensor, got torch.float32"),
        ({"positions": torch.zeros(5, dtype=torch.int64)}, "positions: expected shape (4,), got (5,)"),
        ({"positions": torch.tensor([0, 1, 10, 2])}, f"{OUT_OF_RANGE}, got min 0, max 10"),
        ({"positions": torch.tensor([0, -1, 3, 2])}, f"{OUT_OF_RANGE}, got min -1, max 3"),
    ],
)
def test_rotary_rejects_bad_arguments(kwargs, message):
    escaped = message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    with pytest.raises(ValueError, match=escaped):
        _call(**kwargs)


def test_rotary_rejects_mismatched_sin():
    cos = torch.ones(10, 8)
    with pytest.raises(ValueError, match=r"sin: expected shape \(10, 8\) \(the shape of cos\), got \(10, 4\)"):
        apply_rotary(torch.ones(4, 2, 16), None, cos, torch.ones(10, 4), torch.zeros(4, dtype=torch.int64))
