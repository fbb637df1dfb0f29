"""Test-session setup shared by tests/ and bench/.

Two things must happen before any test module imports fastx:
1. The repo root leaves sys.path, so `import fastx` resolves to the *installed* package
   (where the root folder `kernels/` lives at `fastx/kernels`), never the source folder.
2. Without a CUDA device, Triton's interpreter is switched on: `TRITON_INTERPRET` is read
   when `@triton.jit` decorates a kernel, i.e. when fastx.kernels is first imported.
"""

import os
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]

import pytest  # noqa: E402
import torch  # noqa: E402

# pytest-xdist runs one worker per core; torch's own thread pool in each worker would then
# oversubscribe the cores, and small ops spend their time in spin-waits (measured: the engine
# soak test ran 10x slower with 2 threads per worker on 2 cores than with 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from fastx.testing import make_interpreter_round_like_gpu  # noqa: E402

    make_interpreter_round_like_gpu()


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else the CPU under the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
