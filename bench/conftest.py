"""Shared fixtures for the kernel benchmarks (pytest-benchmark).

Run for figures:  python -m pytest bench -p no:xdist --benchmark-columns=mean,ops
Each benchmark records the bytes or FLOPs it moves in `extra_info` (with the formula beside
the code) and the achieved GB/s or TFLOP/s. Triton timings need CUDA: the CPU interpreter
runs program instances one after another in numpy, so its timings say nothing about a GPU.
"""

from __future__ import annotations

import time

import pytest
import torch

NEEDS_CUDA = "Triton timings need a CUDA GPU: under the CPU interpreter they measure numpy, not the kernel"
COMPILE_NEEDS_CUDA = "torch.compile is compared on CUDA only: on the CPU it times inductor's C++ code, not a GPU peer"


@pytest.fixture(scope="session")
def bench_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def run_impl(benchmark, bench_device):
    """Time `fn` for implementation `impl` ('triton', 'eager' or 'compile') and record throughput.

    `bytes_moved` / `flops` are the formula's value for one call; the achieved rate is stored
    in benchmark.extra_info so the JSON report carries it next to the timing.
    """

    def run(impl: str, fn, *, bytes_moved: int | None = None, flops: int | None = None):
        if impl == "triton" and bench_device != "cuda":
            pytest.skip(NEEDS_CUDA)
        if impl == "compile":
            if bench_device != "cuda":
                pytest.skip(COMPILE_NEEDS_CUDA)
            fn = torch.compile(fn)
        sync = torch.cuda.synchronize if bench_device == "cuda" else (lambda: None)

        def call():
            fn()
            sync()

        call()  # warm-up: compile/autotune outside the timed region
        benchmark(call)
        mean_s = benchmark.stats.stats.mean if benchmark.stats else None
        benchmark.extra_info["impl"] = impl
        if bytes_moved is not None:
            benchmark.extra_info["bytes"] = bytes_moved
            if mean_s:
                benchmark.extra_info["GB/s"] = bytes_moved / mean_s / 1e9
        if flops is not None:
            benchmark.extra_info["flops"] = flops
            if mean_s:
                benchmark.extra_info["TFLOP/s"] = flops / mean_s / 1e12

    return run


@pytest.fixture
def alternate(bench_device):
    """Run fastx and its peer in alternating rounds, so machine noise hits both alike.

    `fns` maps a name to a zero-argument callable; returns {name: [(seconds, its return value), ...]}.
    """

    def run(fns: dict, rounds: int) -> dict[str, list[tuple[float, object]]]:
        runs = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                result = fn()
                if bench_device == "cuda":
                    torch.cuda.synchronize()
                runs[name].append((time.perf_counter() - start, result))
        return runs

    return run
