"""fastx.engine.threads: busy cores are seen in /proc/stat, the thread count follows, num_threads overrides."""

import os
import subprocess
import sys

import pytest
import torch

from fastx.engine import threads
from fastx.engine.config import EngineConfig

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux's /proc/stat")


def test_a_busy_loop_pinned_to_a_core_is_counted():
    cpu = min(os.sched_getaffinity(0))
    spin = f"import os, time; os.sched_setaffinity(0, {{{cpu}}}); end = time.time() + 5\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        seen = [threads.busy_cores({cpu}, sample_seconds=0.2) for _ in range(3)]
    finally:
        child.kill()
        child.wait()
    assert max(seen) == 1  # the loop holds the core for the whole sample (another job may hold it too)


def test_fake_stat_counts_busy_and_idle(monkeypatch):
    samples = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (190, 1100), 1: (110, 1100)}])  # cpu0 90%, cpu1 10%
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    assert threads.busy_cores({0, 1}, sample_seconds=0) == 1


def test_choice_never_exceeds_torchs_count_and_explicit_wins(monkeypatch):
    monkeypatch.setattr(threads, "_affinity", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "busy_cores", lambda cpus: 1)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert threads.choose_num_threads() == 2  # 3 idle cores, but torch was set to 2
        monkeypatch.setattr(threads, "busy_cores", lambda cpus: 4)
        assert threads.choose_num_threads() == 1  # every core busy: still one thread
        assert threads.choose_num_threads(3) == 3
        assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_engine_config_validates_num_threads():
    with pytest.raises(ValueError, match="num_threads: expected a positive integer or None, got 0"):
        EngineConfig(num_threads=0)
    assert EngineConfig(num_threads=2).num_threads == 2
