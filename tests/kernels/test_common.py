"""kernels/_common.py: every launcher runs on its tensors' device."""

import ast
import importlib
from pathlib import Path

import pytest
import torch

from fastx.kernels._common import on_input_device

KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def _launching_functions():
    """(module, name) of every module-level function whose body launches a @triton.jit kernel."""
    found = []
    for path in sorted(KERNELS.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            # kernel[grid](...): a call whose callee is a subscript
            if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Subscript) for n in ast.walk(node)):
                found.append((f"fastx.kernels.{path.stem}", node.name))
    return found


def test_the_scan_finds_the_launchers():
    names = {name for _, name in _launching_functions()}
    assert {"_norm", "_launch", "varlen_attention", "paged_decode_attention", "apply_rotary"} <= names


@pytest.mark.parametrize("module, name", _launching_functions(), ids=lambda x: str(x))
def test_every_launcher_enters_its_inputs_device(module, name):
    launcher = getattr(importlib.import_module(module), name)
    assert getattr(launcher, "runs_on_input_device", False), f"{module}.{name}: decorate it with @on_input_device"


def test_guard_passes_cpu_calls_through():
    calls = []

    @on_input_device
    def launcher(x, scale=1.0):
        calls.append(torch.cuda.is_available() and torch.cuda.current_device())
        return x * scale

    x = torch.ones(3)
    assert torch.equal(launcher(x, scale=2.0), torch.full((3,), 2.0))
    assert launcher.__name__ == "launcher" and len(calls) == 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_launch_on_the_second_gpu_stays_there():
    from fastx.kernels.rms_norm import rms_norm

    torch.cuda.set_device(0)
    x = torch.randn(4, 64, device="cuda:1")
    w = torch.ones(64, device="cuda:1")
    out = rms_norm(x, w, 1e-6)
    assert out.device == x.device and torch.cuda.current_device() == 0
    torch.testing.assert_close(out, torch.nn.functional.rms_norm(x, (64,), w, 1e-6))
