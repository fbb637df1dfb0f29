"""The checks made before any process starts, the core split, and a rendezvous that never completes."""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from fastx.distributed import group
from fastx.models.gpt2 import GPT2Config
from fastx.models.llama_config import LlamaConfig


def _llama(heads, kv_heads, width=96):
    return LlamaConfig(
        vocab_size=50,
        hidden_size=heads * 8,
        intermediate_size=width,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )


@pytest.mark.parametrize(("heads", "kv_heads", "size"), [(4, 2, 2), (4, 1, 2), (6, 3, 3), (8, 2, 4), (6, 2, 6)])
def test_sizes_that_split_the_heads_pass(heads, kv_heads, size):
    group.check_tensor_parallel_size(_llama(heads, kv_heads, width=12 * size), size, "m")


def test_a_size_that_does_not_divide_the_heads_names_them():
    # SmolLM2-135M's shape: 9 query heads, 3 KV heads
    with pytest.raises(ValueError, match=r"2 ranks cannot split smol's 9 query heads and 3 KV heads.*\[1, 3\]"):
        group.check_tensor_parallel_size(_llama(9, 3, width=1536), 2, "smol")
    with pytest.raises(ValueError, match="4 ranks cannot split m's 4 query heads and 3 KV heads"):
        group.check_tensor_parallel_size(_llama(4, 3, width=96), 4, "m")  # neither divides the other
    with pytest.raises(ValueError, match="does not divide m's MLP width 90"):
        group.check_tensor_parallel_size(_llama(4, 2, width=90), 4, "m")


def test_gpt2_and_unsupported_families():
    gpt2 = GPT2Config(vocab_size=50, n_positions=16, n_embd=48, n_layer=1, n_head=6)
    group.check_tensor_parallel_size(gpt2, 3, "g")
    with pytest.raises(ValueError, match="4 ranks cannot split g's 6 query heads"):
        group.check_tensor_parallel_size(gpt2, 4, "g")
    with pytest.raises(ValueError, match="covers the Llama family and GPT-2"):
        group.check_tensor_parallel_size(object(), 2, "bert")
    for bad in (0, -1, 2.0, True, "2"):
        with pytest.raises(ValueError, match="tensor_parallel_size: expected a positive integer"):
            group.check_tensor_parallel_size(gpt2, bad, "g")


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="2 ranks \\(2 on this machine\\) need 2 CUDA devices, this machine has 1"):
        group.check_devices(torch.device("cuda", 0), 2, 2)
    group.check_devices(torch.device("cuda", 0), 4, 1)  # torchrun on 4 machines of one GPU each
    group.check_devices(torch.device("cpu"), 8, 8)  # CPU ranks share the cores


def test_cores_are_split_without_overlap(monkeypatch):
    monkeypatch.setattr(group.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    shares = [group.core_share(r, 3) for r in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 5]]
    monkeypatch.setattr(group.os, "sched_getaffinity", lambda pid: {4, 9}, raising=False)
    assert [group.core_share(r, 3) for r in range(3)] == [[4], [9], [4]]  # more ranks than cores: shared


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv(group.TIMEOUT_ENV, raising=False)
    assert group.timeout_s() == group.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(group.TIMEOUT_ENV, "2.5")
    assert group.timeout_s() == 2.5
    for bad in ("0", "soon"):
        monkeypatch.setenv(group.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match="FASTX_TP_TIMEOUT: expected a positive number of seconds"):
            group.timeout_s()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NEVER_FORMS = """
import torch
from fastx.distributed import group
group.form_groups(None, 1, 2, torch.device("cpu"), 1.0)
"""


def test_a_group_that_never_forms_raises_and_the_process_exits():
    """torchrun's rank 1 whose rank 0 never comes up: a clear error after the timeout, and the process
    ends (its own interpreter: a failed rendezvous leaves torch.distributed's group counter advanced)."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", NEVER_FORMS], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "rank 1 of 2 could not form the gloo process group within 1 s" in run.stderr
    assert time.monotonic() - started < 60


def test_rank0_gives_up_on_ranks_that_never_join():
    store = group.open_store("127.0.0.1", 0, 0, 3, 5.0)
    store.set("fastx/tp/ready/1", "1")  # rank 1 checked in, rank 2 never does
    with pytest.raises(RuntimeError, match=r"ranks \[2\] did not join within 0.3 s"):
        group.wait_for_ranks(store, 3, 0.3, lambda: None)

    def dead():
        raise RuntimeError("worker rank 2 exited")

    with pytest.raises(RuntimeError, match="worker rank 2 exited"):  # a dead worker ends the wait at once
        group.wait_for_ranks(store, 3, 60.0, dead)
