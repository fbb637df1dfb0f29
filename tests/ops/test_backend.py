"""Backend selection: CUDA -> Triton, CPU -> eager, FASTX_BACKEND overrides, never a silent fallback."""

import pytest
import torch

from fastx.ops import _backend


def test_cpu_tensors_use_eager_by_default(monkeypatch):
    monkeypatch.delenv("FASTX_BACKEND", raising=False)
    assert not _backend.use_triton(torch.ones(2))


def test_backend_torch_forces_eager(monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", "torch")
    assert not _backend.use_triton(torch.ones(2), None)


def test_backend_triton_on_cpu_uses_the_interpreter(monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.use_triton(torch.ones(2))


def test_backend_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _backend.use_triton(torch.ones(2))


def test_unknown_backend_names_the_variable(monkeypatch):
    monkeypatch.setenv("FASTX_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTX_BACKEND: expected one of auto, triton, torch, got 'cuda'"):
        _backend.use_triton(torch.ones(2))
