"""A tensor-parallel worker: join the groups, load this rank's shard, run every step rank 0 broadcasts.

Started by rank 0 as `python -m fastx.distributed.worker` with a pickled WorkerSpec on stdin (a
fresh interpreter: the user's script is never re-imported), or entered by ranks > 0 under torchrun.
Its stdin stays open for its life: when rank 0's process dies the pipe closes and the worker exits,
so none is left behind even when rank 0 cannot say goodbye.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastx.distributed.group import Groups, broadcast, close_groups, form_groups, gather, open_store
from fastx.distributed.layers import building


@dataclass(frozen=True)
class WorkerSpec:
    rank: int
    size: int
    host: str
    port: int
    source: str  # the checkpoint: Hub id, folder or .gguf path
    dtype: str | None
    device: str  # this rank's device ("cpu", "cuda:1")
    revision: str | None
    pack_weights: bool
    cores: list[int]
    timeout: float


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters this process holds (a tied matrix counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def use_cores(cores: list[int], pin: bool) -> None:
    """Compute on `cores` only: torch's threads sized to them (and this process pinned to them)."""
    if pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


def load_shard(source, dtype, device, revision, pack_weights, groups: Groups):
    from fastx.models import AutoModelForCausalLM
    from fastx.ops.linear import pack_linear_weights

    with building(groups.shard):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device=device, revision=revision)
    if pack_weights:
        pack_linear_weights(model)
    return model


def serve(model, groups: Groups) -> None:
    """Run the steps rank 0 broadcasts until it says stop."""
    from fastx.engine.runner import ModelRunner

    runner, device = None, groups.device
    while True:
        message = broadcast(groups.control)
        kind = message[0]
        if kind == "stop":
            dist.barrier(group=groups.control)  # every rank leaves the groups only after all have the stop
            return
        if kind == "runner":
            runner = ModelRunner(model, **message[1])
        elif kind == "weights":
            gather(groups.control, weight_bytes(model))
        elif kind == "step":
            _, copies, input_ids, meta, rows = message
            with torch.inference_mode():
                runner.copy_blocks(copies)
                runner.forward_step(input_ids.to(device), meta.to(device), rows)
        else:
            raise RuntimeError(f"tensor-parallel worker: unknown message {kind!r} from rank 0")


def run(spec: WorkerSpec) -> None:
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        use_cores(spec.cores, pin=True)
    store = open_store(spec.host, spec.port, spec.rank, spec.size, spec.timeout)
    groups = form_groups(store, spec.rank, spec.size, device, spec.timeout)
    try:
        model = load_shard(spec.source, spec.dtype, device, spec.revision, spec.pack_weights, groups)
        serve(model, groups)
    finally:
        close_groups()


def _exit_when_parent_goes() -> None:
    sys.stdin.buffer.read()  # returns at EOF: rank 0's process closed the pipe or died
    os._exit(1)


def main() -> None:
    spec = pickle.load(sys.stdin.buffer)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    code = 0
    try:
        run(spec)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        # os._exit: a normal shutdown would wait on the stdin watcher, blocked in its read.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
