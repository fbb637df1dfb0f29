"""Process groups for tensor parallelism: the size checks, the rendezvous, the two groups, the core split.

Every rank joins two groups over the same ranks:
- the model's group (NCCL on CUDA, gloo on the CPU): the all-reduces and the logits gather inside
  a step, under a timeout that bounds how long a rank waits for a peer that stopped answering;
- a gloo control group on the CPU (as vLLM's metadata group): rank 0 broadcasts each step's
  metadata through it. Its timeout is long because workers wait there while the user's process
  is idle between requests; a peer that dies closes its sockets, which gloo reports at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from fastx.distributed.layers import Shard

TIMEOUT_ENV = "FASTX_TP_TIMEOUT"  # seconds: forming the groups, and any one collective of a step
DEFAULT_TIMEOUT_S = 300.0  # a CUDA rank's first step compiles kernels while the others wait for it
CONTROL_TIMEOUT = timedelta(days=30)
_READY = "fastx/tp/ready/{}"

# Config class -> (query heads, kv heads, MLP width) attribute names: the families with sharded layers.
SHARDED_FAMILIES = {
    "LlamaConfig": ("num_attention_heads", "num_key_value_heads", "intermediate_size"),
    "GPT2Config": ("n_head", "n_head", "inner_size"),
}


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}")
    return value


def check_tensor_parallel_size(config: Any, size: object, source: str) -> None:
    """ValueError unless `size` ranks can split this model's heads, MLP and vocabulary evenly."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"tensor_parallel_size: expected a positive integer, got {size!r}")
    if size == 1:
        return
    names = SHARDED_FAMILIES.get(type(config).__name__)
    if names is None:
        raise ValueError(
            f"tensor_parallel_size: {source} is a {type(config).__name__} model; tensor parallelism covers "
            f"the Llama family and GPT-2 ({', '.join(SHARDED_FAMILIES)})"
        )
    heads, kv_heads, width = (getattr(config, n) for n in names)
    ok = [n for n in range(1, heads + 1) if heads % n == 0 and (kv_heads % n == 0 or n % kv_heads == 0)]
    ok = [n for n in ok if width % n == 0]
    if heads % size or (kv_heads % size and size % kv_heads):
        raise ValueError(
            f"tensor_parallel_size: {size} ranks cannot split {source}'s {heads} query heads and {kv_heads} "
            f"KV heads (the query heads must divide by it, and the KV heads divide by it or it by them); "
            f"sizes that work: {ok}"
        )
    if width % size:
        raise ValueError(f"tensor_parallel_size: {size} does not divide {source}'s MLP width {width}; sizes: {ok}")


def check_devices(device: torch.device, size: int, local_ranks: int) -> None:
    """On CUDA every rank of this machine needs a GPU of its own."""
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_ranks > count:
            raise ValueError(
                f"tensor_parallel_size: {size} ranks ({local_ranks} on this machine) need {local_ranks} CUDA "
                f"devices, this machine has {count}"
            )


def core_share(rank: int, local_ranks: int) -> list[int]:
    """The CPU cores of this process's affinity that `rank` (of `local_ranks` here) computes on."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if local_ranks >= len(cores):
        return [cores[rank % len(cores)]]
    per_rank = len(cores) // local_ranks
    return cores[rank * per_rank : (rank + 1) * per_rank]


@dataclass
class Groups:
    shard: Shard  # rank, size and the model's group
    control: Any  # the gloo group of the step broadcasts
    device: torch.device


def open_store(host: str, port: int, rank: int, size: int, timeout: float) -> dist.TCPStore:
    """Rank 0 hosts the rendezvous store (port 0: any free port); the others connect to it."""
    try:
        return dist.TCPStore(
            host, port, size, is_master=rank == 0, timeout=timedelta(seconds=timeout), wait_for_workers=False
        )
    except (RuntimeError, OSError) as exc:  # DistStoreError is a RuntimeError
        raise RuntimeError(
            f"tensor parallelism: rank {rank} of {size} could not reach the rendezvous at {host}:{port} "
            f"within {timeout:g} s ({exc}); the process group did not form"
        ) from None


def wait_for_ranks(store: dist.TCPStore, size: int, timeout: float, check_alive: Callable[[], None]) -> None:
    """Rank 0: wait until every rank has checked in, calling `check_alive` (raises for a dead worker) meanwhile."""
    keys = [_READY.format(r) for r in range(1, size)]
    deadline = time.monotonic() + timeout
    while not store.check(keys):
        check_alive()
        if time.monotonic() > deadline:
            missing = [r for r in range(1, size) if not store.check([_READY.format(r)])]
            raise RuntimeError(
                f"tensor parallelism: ranks {missing} did not join within {timeout:g} s; the process group did not form"
            )
        time.sleep(0.05)


def form_groups(store: dist.TCPStore | None, rank: int, size: int, device: torch.device, timeout: float) -> Groups:
    """Join the model's group and the control group (rank 0 after wait_for_ranks, the others at once).

    `store` None: torchrun's rendezvous (MASTER_ADDR / MASTER_PORT, env://).
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    where = {"store": store} if store is not None else {"init_method": "env://"}
    check_no_group()
    try:
        if store is not None and rank:
            store.set(_READY.format(rank), "1")
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout), **where)
        control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    except (RuntimeError, ValueError, OSError, TimeoutError) as exc:  # DistStoreError is a RuntimeError
        close_groups()
        raise RuntimeError(
            f"tensor parallelism: rank {rank} of {size} could not form the {backend} process group within "
            f"{timeout:g} s ({exc})"
        ) from None
    return Groups(Shard(rank, size, dist.group.WORLD), control, device)


def check_no_group() -> None:
    """torch.distributed holds one default group per process: one tensor-parallel LLM at a time."""
    if dist.is_initialized():
        raise RuntimeError(
            "tensor_parallel_size: this process already belongs to a torch.distributed process group (another "
            "tensor-parallel LLM, or the caller's own); close() that LLM first, or destroy the group"
        )


def close_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(control: Any, message: Any = None) -> Any:
    """Rank 0 sends `message` to every rank of `control`; each rank returns it."""
    box = [message]
    dist.broadcast_object_list(box, src=0, group=control)
    return box[0]


def gather(control: Any, value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
    out = [None] * dist.get_world_size(control) if dist.get_rank() == 0 else None
    dist.gather_object(value, out, dst=0, group=control)
    return out
