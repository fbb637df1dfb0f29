"""Rank 0's model runner under tensor parallelism: each step goes to the workers, then through the model.

The engine above is unchanged: the scheduler and the block manager live on rank 0 only, the
sampler reads rank 0's logits. Workers run the same ModelRunner on their shard (worker.py); this
subclass broadcasts what a step hands the model (ids, metadata, block copies, the rows whose
logits are wanted) before computing it, so every rank enters the step's collectives together.
CUDA graphs are off here (enforce_eager): a replayed graph would skip the broadcast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from fastx.distributed.group import broadcast
from fastx.engine.runner import ModelRunner


def portable(meta):
    """The step's metadata as small CPU tensors of their own (the buffers' views would pickle whole)."""
    fields = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
    for name, value in fields.items():
        if isinstance(value, torch.Tensor):
            fields[name] = value.detach().to("cpu", copy=True)
    return dataclasses.replace(meta, **fields)


class DriverRunner(ModelRunner):
    def __init__(
        self,
        model,
        num_blocks: int,
        block_size: int,
        *,
        control: Any,
        on_failure: Callable[[BaseException], BaseException],
        **options,
    ):
        options["enforce_eager"] = True
        self.control, self.on_failure = control, on_failure
        self._copies: list[tuple[int, int]] = []
        # The workers build their runner (their share of the KV cache: the same blocks, their heads) from this.
        self._send(("runner", {"num_blocks": num_blocks, "block_size": block_size, **options}))
        super().__init__(model, num_blocks, block_size, **options)

    def _send(self, message) -> None:
        try:
            broadcast(self.control, message)
        except (RuntimeError, ValueError) as exc:  # ValueError: the group was destroyed by an earlier failure
            raise self.on_failure(exc) from exc

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        self._copies = copies  # sent with the step, which every rank applies before its forward

    def forward_step(self, input_ids: torch.Tensor, meta, rows: list[int] | int | None = None) -> torch.Tensor:
        copies, self._copies = self._copies, []
        self._send(("step", copies, input_ids.detach().to("cpu", copy=True), portable(meta), rows))
        try:
            super().copy_blocks(copies)
            return super().forward_step(input_ids, meta, rows)
        except RuntimeError as exc:  # a collective failed: a peer died or stopped answering
            raise self.on_failure(exc) from exc
