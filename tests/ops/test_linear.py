"""fastx.ops.linear: F.linear's values at every row count, whichever GEMM orientation runs."""

import pytest
import torch
import torch.nn.functional as F

from fastx.ops.linear import (
    ONEDNN_PACKING,
    PACKED_MIN_ROWS,
    TRANSPOSED_ROWS,
    Linear,
    _gemm_columns,
    linear,
    pack_linear_weights,
)


@pytest.mark.parametrize("form", ["auto", "transposed", "linear"])
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 9, 15, 16, 17, TRANSPOSED_ROWS.stop - 1, TRANSPOSED_ROWS.stop])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_equals_f_linear(rows, bias, form, monkeypatch):
    monkeypatch.setenv("FASTX_CPU_GEMM_FORM", form)  # auto: whichever this CPU timed faster
    x = torch.randn(rows, 40)
    w = torch.randn(24, 40)
    b = torch.randn(24) if bias else None
    out = linear(x, w, b)
    assert out.shape == (rows, 24)
    out.view(rows, 2, 12)  # the models split the last dim into heads
    # Same products, same accumulation over K: the orientation changes which side is narrow.
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 16, 40), (40,)])
def test_linear_other_ranks_and_dtypes_take_f_linear(shape):
    x = torch.randn(shape)
    w = torch.randn(24, 40)
    torch.testing.assert_close(linear(x, w), F.linear(x, w), rtol=0, atol=0)
    xb, wb = torch.randn(16, 40).bfloat16(), w.bfloat16()
    torch.testing.assert_close(linear(xb, wb), F.linear(xb, wb), rtol=0, atol=0)


def test_linear_module_is_a_drop_in_nn_linear():
    reference = torch.nn.Linear(40, 24)
    module = Linear(40, 24)
    module.load_state_dict(reference.state_dict())
    assert isinstance(module, torch.nn.Linear)
    x = torch.randn(16, 40)
    torch.testing.assert_close(module(x), reference(x), rtol=1e-6, atol=1e-5)


def test_gemm_columns_pad_to_the_fast_column_counts():
    assert [_gemm_columns(r) for r in range(1, 10)] == [2, 2, 4, 4, 5, 6, 7, 8, 16]
    assert all(_gemm_columns(r) >= r and _gemm_columns(r) - r < 8 for r in TRANSPOSED_ROWS)


needs_onednn = pytest.mark.skipif(not ONEDNN_PACKING, reason="this torch build has no oneDNN linear")


@needs_onednn
@pytest.mark.parametrize("shape", [(1, 40), (2, 40), (PACKED_MIN_ROWS, 40), (16, 40), (100, 40), (3, 5, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_equals_f_linear(shape, bias):
    module = Linear(40, 24, bias=bias)
    module.pack()
    x = torch.randn(shape)
    out = module(x)
    assert out.shape == (*shape[:-1], 24)
    # oneDNN accumulates over K in its own order: fp32 rounding differences only.
    torch.testing.assert_close(out, F.linear(x, module.weight, module.bias), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(module.project(x), F.linear(x, module.weight), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_pack_linear_weights_packs_every_projection_and_refuses_other_dtypes():
    model = torch.nn.Sequential(Linear(8, 8), torch.nn.ReLU(), Linear(8, 4))
    assert pack_linear_weights(model) == 2
    assert all(m.packed_weight is not None for m in model if isinstance(m, Linear))
    assert "packed_weight" not in " ".join(model.state_dict())  # checkpoints never see the copy
    with pytest.raises(ValueError, match="pack_weights: expected a float32 model on the CPU, got torch.bfloat16"):
        pack_linear_weights(torch.nn.Sequential(Linear(8, 8)).bfloat16())


def test_each_case_is_timed_once_and_the_choice_kept(monkeypatch):
    import importlib

    linear_module = importlib.import_module("fastx.ops.linear")  # fastx.ops.linear the attribute is the function
    monkeypatch.setattr(linear_module, "_FORM_CHOICE", {})
    timed = []
    real = linear_module._time_forms
    monkeypatch.setattr(linear_module, "_time_forms", lambda *a: timed.append(a[0].shape) or real(*a))
    x, w = torch.randn(3, 40), torch.randn(24, 40)
    first = [linear(x, w) for _ in range(4)]
    assert timed == [(3, 40)] and list(linear_module._FORM_CHOICE) == [(24, 40, 3, False)]
    assert all(torch.equal(first[0], out) for out in first[1:])  # one form for the process: the same bits


def test_a_bad_form_setting_is_refused(monkeypatch):
    monkeypatch.setenv("FASTX_CPU_GEMM_FORM", "fastest")
    with pytest.raises(ValueError, match="FASTX_CPU_GEMM_FORM: expected auto, linear or transposed"):
        linear(torch.randn(2, 40), torch.randn(24, 40))
