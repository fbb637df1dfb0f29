"""Rank 0's side of `LLM(model, tensor_parallel_size=N)`: start or join the ranks, watch them, shut them down.

Two ways in, one result (a `TensorParallel` handle on rank 0):
- one machine: the user's process is rank 0 and starts N-1 workers (`python -m
  fastx.distributed.worker`), each on its own GPU, or on its own share of the CPU cores;
- torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK` set, one machine or several): every process builds
  the LLM; rank 0 returns from here, ranks > 0 run the worker loop and exit when rank 0 closes.
Everything that can be checked is checked before a process starts (the sizes against the heads,
the GPUs); a worker that dies before the groups form, or a rendezvous that never completes,
raises in rank 0 and the other processes are ended.
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import subprocess
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from fastx.distributed.group import (
    Groups,
    broadcast,
    check_devices,
    check_no_group,
    check_tensor_parallel_size,
    close_groups,
    core_share,
    form_groups,
    gather,
    open_store,
    timeout_s,
    wait_for_ranks,
)
from fastx.distributed.runner import DriverRunner
from fastx.distributed.worker import WorkerSpec, load_shard, serve, use_cores

# How rank 0 starts a worker (a fresh interpreter; tests point it at a process that fails).
WORKER_COMMAND = [sys.executable, "-m", "fastx.distributed.worker"]
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    return all(v in os.environ for v in _TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def rank_device(device: torch.device | str | None, local_rank: int) -> torch.device:
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


class TensorParallel:
    """The ranks of one LLM, seen from rank 0: its groups, the workers it started, their shutdown."""

    def __init__(self, groups: Groups, workers: list[subprocess.Popen], threads: int | None, store=None):
        self.groups, self.workers = groups, workers
        self._store = store  # the rendezvous (spawned workers) lives as long as the groups
        self._threads_before = threads  # rank 0's torch thread count before its share of the cores
        self.broken: BaseException | None = None
        self.closed = False
        atexit.register(self.close)

    @property
    def shard(self):
        return self.groups.shard

    @property
    def device(self) -> torch.device:
        return self.groups.device

    # -- starting ----------------------------------------------------------------------------------
    @classmethod
    def start(cls, config, size: int, source: str, dtype, device, revision, pack_weights: bool) -> TensorParallel:
        """Check, then start the ranks. Under torchrun, ranks > 0 never return (SystemExit after the loop)."""
        check_tensor_parallel_size(config, size, str(source))
        check_no_group()
        if launched_by_torchrun():
            world = int(os.environ["WORLD_SIZE"])
            if world != size:
                raise ValueError(f"tensor_parallel_size: {size}, but torchrun started {world} processes (WORLD_SIZE)")
            return cls._join_torchrun(size, source, dtype, device, revision, pack_weights)
        return cls._spawn(size, source, dtype, device, revision, pack_weights)

    @classmethod
    def _spawn(cls, size, source, dtype, device, revision, pack_weights) -> TensorParallel:
        device = rank_device(device, 0)
        check_devices(device, size, size)
        timeout = timeout_s()
        store = open_store("127.0.0.1", 0, 0, size, timeout)
        workers: list[subprocess.Popen] = []
        threads = None
        try:
            for rank in range(1, size):
                spec = WorkerSpec(
                    rank, size, "127.0.0.1", store.port, str(source), _dtype_name(dtype),
                    str(rank_device(device, rank)), revision, pack_weights, core_share(rank, size), timeout,
                )  # fmt: skip
                env = {**os.environ, "OMP_NUM_THREADS": str(len(spec.cores))}
                proc = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, env=env)
                workers.append(proc)
                proc.stdin.write(pickle.dumps(spec))
                proc.stdin.flush()
            wait_for_ranks(store, size, timeout, functools.partial(_check_alive, workers, "before the group formed"))
            if device.type != "cuda":
                threads = torch.get_num_threads()
                use_cores(core_share(0, size), pin=False)  # the user's process keeps its affinity
            groups = form_groups(store, 0, size, device, timeout)
        except BaseException:
            _end(workers)
            if threads is not None:
                torch.set_num_threads(threads)
            raise
        return cls(groups, workers, threads, store)

    @classmethod
    def _join_torchrun(cls, size, source, dtype, device, revision, pack_weights) -> TensorParallel:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", size))
        device = rank_device(device, local_rank)
        check_devices(device, size, local_ranks)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            use_cores(core_share(local_rank, local_ranks), pin=True)
        groups = form_groups(None, rank, size, device, timeout_s())  # torchrun's rendezvous: env://
        if rank == 0:
            return cls(groups, [], None)
        try:
            serve(load_shard(str(source), _dtype_name(dtype), device, revision, pack_weights, groups), groups)
        finally:
            close_groups()
        raise SystemExit(0)

    # -- running -----------------------------------------------------------------------------------
    def runner_factory(self):
        """What the Engine builds its runner with: rank 0's DriverRunner on this group."""
        return functools.partial(DriverRunner, control=self.groups.control, on_failure=self.failure)

    def failure(self, exc: BaseException) -> BaseException:
        """The error to raise for a failed collective: which worker died, when one did. Ends the group."""
        if self.broken is not None:
            return self.broken
        deadline = time.monotonic() + 2.0  # a killed peer's exit status may lag its closed sockets
        dead = []
        while not dead and time.monotonic() < deadline and self.workers:
            dead = [(r, p) for r, p in enumerate(self.workers, start=1) if p.poll() is not None]
            time.sleep(0.02)
        if dead:
            who = ", ".join(f"rank {r} (pid {p.pid}) exited with code {p.returncode}" for r, p in dead)
            detail = f"tensor-parallel worker {who}"
        else:
            detail = f"a tensor-parallel collective failed ({exc})"
        self.broken = RuntimeError(f"{detail}; this LLM cannot continue, build a new one")
        self.close()
        return self.broken

    def weight_bytes(self, model) -> list[int]:
        """Bytes of weights each rank holds, in rank order."""
        from fastx.distributed.worker import weight_bytes

        self._require_open()
        broadcast(self.groups.control, ("weights",))
        return gather(self.groups.control, weight_bytes(model))

    def _require_open(self) -> None:
        if self.broken is not None:
            raise self.broken
        if self.closed:
            raise RuntimeError("tensor parallelism: this LLM was closed")

    def close(self) -> None:
        """Stop the workers (a 'stop' broadcast, then wait, then kill), leave the groups. Idempotent."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)
        if self.broken is None:
            try:
                broadcast(self.groups.control, ("stop",))
                dist.barrier(group=self.groups.control)
            except (RuntimeError, ValueError):
                pass  # a worker is already gone (or the group was destroyed): the rest are ended below
        _end(self.workers, grace=10.0 if self.broken is None else 0.0)
        close_groups()
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)


def _dtype_name(dtype) -> str | None:
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def _check_alive(workers: list[subprocess.Popen], when: str) -> None:
    for rank, proc in enumerate(workers, start=1):
        if proc.poll() is not None:
            raise RuntimeError(
                f"tensor parallelism: worker rank {rank} (pid {proc.pid}) exited with code {proc.returncode} "
                f"{when} (its error is printed above); the process group did not form"
            )


def _end(workers: list[subprocess.Popen], grace: float = 0.0) -> None:
    """Wait up to `grace` seconds for each worker to exit, then kill it; close its pipe."""
    deadline = time.monotonic() + grace
    for proc in workers:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass


__all__: list[Any] = ["TensorParallel", "WORKER_COMMAND", "launched_by_torchrun"]
