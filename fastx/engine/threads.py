"""How many intra-op threads a CPU engine runs: as many as there are cores other processes leave idle.

torch's CPU ops split each GEMM and elementwise op statically over its OpenMP threads and wait for the
slowest. On a 2-core machine with one core held by another process, the thread on that core gets about
half of it, so every op of a decode step waits for it, and the spinning waits of OpenMP's default
policy steal more from the process that holds the core: batch-1 decode of SmolLM2 fell from ~12 to
1-3 tok/s (issue 15), while one thread on the idle core kept its full single-core rate. So the engine
counts the cores of its affinity mask that are busy over a short sample of /proc/stat when it starts
(busy: >= BUSY_FRACTION of the sample spent outside idle/iowait, which at that moment is other
processes' work: the engine itself is not computing yet) and runs one thread per remaining core.
`num_threads=` (LLM, EngineConfig) overrides the choice.
NOTE (bench/bench_e2e_gguf.py, 2-core EPYC shared with other jobs, SmolLM2 fp32 batch-1 decode): one
thread 8.2 tok/s, two 6.1 while other jobs ran; with a busy loop added, one thread 6.2 and two 3.8, and
the choice here was one (0.75x the best rate before the loop). The wait policy is left alone: OpenMP
reads OMP_WAIT_POLICY once, when torch loads its runtime, so only the user's environment can set it,
and neither policy won everywhere: PASSIVE at two threads measured 8.1 vs 13.8 tok/s (default) in an
earlier run with less other load, and 8.1 vs 4.3 when other jobs held the cores.
"""

from __future__ import annotations

import os
import time

import torch

BUSY_FRACTION = 0.5
SAMPLE_SECONDS = 0.1  # long enough for a busy loop to show as ~100% on its core, short beside a model load


def _cpu_times() -> dict[int, tuple[int, int]]:
    """{cpu index: (busy jiffies, total jiffies)} from /proc/stat; {} where there is none."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu" and len(fields) >= 5:
            values = [int(v) for v in fields[:8]]
            idle = values[3] + values[4]  # idle + iowait
            times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def busy_cores(cpus: set[int] | None = None, sample_seconds: float = SAMPLE_SECONDS) -> int:
    """How many of `cpus` (default: this process's affinity) were busy over the sample (see the docstring)."""
    cpus = cpus if cpus is not None else _affinity()
    before = _cpu_times()
    time.sleep(sample_seconds)
    after = _cpu_times()
    busy = 0
    for cpu in cpus:
        if cpu in before and cpu in after:
            work, total = (a - b for a, b in zip(after[cpu], before[cpu]))
            busy += total > 0 and work >= BUSY_FRACTION * total
    return busy


def _affinity() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def choose_num_threads(num_threads: int | None = None) -> int:
    """`num_threads` when given, else the cores of this process's affinity that no other process keeps busy
    (at least one), never more than torch's current count (so OMP_NUM_THREADS or an earlier
    torch.set_num_threads, e.g. one thread per pytest-xdist worker, stays a ceiling)."""
    if num_threads is not None:
        return num_threads
    cpus = _affinity()
    return max(1, min(torch.get_num_threads(), len(cpus) - busy_cores(cpus)))


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op thread count for the CPU (choose_num_threads); returns it."""
    threads = choose_num_threads(num_threads)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
