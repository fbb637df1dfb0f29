"""Runs one scheduled step on the model: writes the step's inputs, owns the paged KV cache.

Legend: T = tokens computed this step, B = sequences, L = layers, P = block size,
K = kv heads, D = head dim.

Decode steps on the Triton path (CUDA, or the interpreter) are padded to a batch bucket and
launch the same kernels with the same grids and scalars at every context length, so on CUDA
each bucket's step is captured once as a CUDA graph and replayed (cuda_graphs.py;
`enforce_eager=True` turns that off). The eager CPU path runs the batch as it is: there is no
grid to keep fixed, and padded rows would only add work.
"""

from __future__ import annotations

import logging
import time

import torch

import fastx.ops as ops
from fastx.engine.cuda_graphs import DecodeGraphs, bucket_for, decode_buckets
from fastx.engine.scheduler import ScheduledBatch
from fastx.engine.step_buffers import StepBuffers
from fastx.ops._backend import use_triton

log = logging.getLogger("fastx.engine")


def kv_bytes_per_block(model, block_size: int, dtype: torch.dtype) -> int:
    """K and V of every layer for one block of tokens."""
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * torch.finfo(dtype).bits // 8


class ModelRunner:
    def __init__(
        self,
        model,
        num_blocks: int,
        block_size: int,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        enforce_eager: bool = False,
    ):
        self.model = model
        self.block_size = block_size
        self.device = model.device
        shape = (num_blocks, block_size, model.num_kv_heads, model.head_dim)  # (N, P, K, D) per layer
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=model.dtype, device=self.device),
                torch.zeros(shape, dtype=model.dtype, device=self.device),
            )
            for _ in range(model.num_layers)
        ]
        # No sequence outgrows the model's length or the whole cache: that bounds the table width
        # and, fixed for the engine's life, keeps each bucket's decode split count fixed.
        longest = min(max_model_len, num_blocks * block_size)
        self.buffers = StepBuffers(
            max(max_num_batched_tokens, max_num_seqs), max_num_seqs, -(-longest // block_size), block_size, self.device
        )
        self.buckets = decode_buckets(max_num_seqs)
        k_cache = self.kv_caches[0][0]
        self.decode_splits = {
            rows: ops.decode_num_splits(rows, model.num_query_heads, k_cache, longest) for rows in self.buckets
        }
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and not enforce_eager and self.on_kernel_path():
            self.graphs = self._capture()

    # -- decode under CUDA graphs ----------------------------------------------------------------
    def forward_step(self, input_ids: torch.Tensor, meta, rows: list[int] | int | None = None) -> torch.Tensor:
        """The model on one step's inputs -> logits of `rows` (row indices, the first n rows, or all).

        The one place a step reaches the model: a tensor-parallel driver (fastx.distributed)
        overrides it to hand each step to its workers first.
        """
        hidden = self.model.forward_packed(input_ids, meta, self.kv_caches)  # (T, E)
        if isinstance(rows, int):
            hidden = hidden[:rows]
        elif rows is not None:
            if not rows:  # every sequence is mid-way through a chunked prompt: no head
                return hidden.new_empty(0, 0)
            hidden = hidden[rows]
        return self.model.compute_logits(hidden)

    def _padded_decode(self, rows: int):
        """(ids, metadata) of a decode step of `rows` padded rows: it reads and writes no K/V."""
        ids, meta = self.buffers.empty_decode(rows)
        meta.decode_splits = self.decode_splits[rows]
        return ids, meta

    def _capture(self) -> DecodeGraphs:
        inputs = {rows: self._padded_decode(rows) for rows in self.buckets}
        with torch.inference_mode():
            return DecodeGraphs(lambda rows: self.forward_step(*inputs[rows]), self.buckets, self.device)

    def warm_up(self) -> None:
        """Compile what the engine will launch before its first request; logs the time.

        Decode was compiled while capturing; eager decode (enforce_eager) runs each bucket's
        padded step once here. Prefill runs one one-token step over an empty context.
        """
        if self.device.type != "cuda" or not self.on_kernel_path():
            return  # eager torch ops and the interpreter compile nothing
        started = time.perf_counter()
        with torch.inference_mode():
            if self.graphs is None:
                for rows in self.buckets:
                    self.forward_step(*self._padded_decode(rows))
            ids, meta = self.buffers.empty_decode(1)
            meta.is_decode = False  # a one-token prefill of an empty context: the prefill kernels
            self.forward_step(ids, meta)
        torch.cuda.synchronize(self.device)
        log.info("compiled the engine's kernels in %.2f s", time.perf_counter() - started)

    # -- steps -----------------------------------------------------------------------------------
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared blocks before a sequence writes into its copy."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    def on_kernel_path(self) -> bool:
        """Whether this step's ops launch the Triton kernels (CUDA, or the interpreter) rather than eager torch."""
        return use_triton(self.kv_caches[0][0])

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Compute the step; return logits (N, V), one row per `batch.draws`.

        Reads the sequences and writes only the KV cache: their progress is the scheduler's to advance.
        """
        self.copy_blocks(batch.block_copies)
        if batch.is_decode:
            logits = self._decode(batch)
        else:
            input_ids, meta = self.buffers.write(batch)
            logits = self.forward_step(input_ids, meta, batch.sample_rows)
            if not batch.sample_rows:
                return logits
        # The head runs once per distinct row: fork children reuse their parent's logits as they are.
        return logits[batch.draw_rows] if batch.forks else logits

    def _decode(self, batch: ScheduledBatch) -> torch.Tensor:
        n_seqs = len(batch.seqs)
        kernels = self.on_kernel_path()
        rows = bucket_for(n_seqs, self.buckets) if kernels else n_seqs
        input_ids, meta = self.buffers.write(batch, rows)
        if kernels and self.graphs is not None:
            return self.graphs.step(rows)[:n_seqs]
        if kernels:
            meta.decode_splits = self.decode_splits[rows]
        return self.forward_step(input_ids, meta, n_seqs)  # every real row samples
