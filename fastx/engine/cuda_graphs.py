"""Decode steps captured as CUDA graphs, one per batch bucket, replayed every step (vLLM's approach).

A decode step of a small model on a fast GPU is bound by the host: ~30 layers x ~10 kernel
launches of Python and driver work, several milliseconds per step, while the GPU needs less.
A CUDA graph records the step's launches once and replays them with one call. Replay repeats
the recorded launches exactly (same grids, same scalars, same pointers), which the rest of the
engine makes true: step inputs live in persistent buffers (step_buffers.py), the batch is padded
to a bucket, and the decode kernel's grid depends on the bucket, never on the context length.

Buckets follow vLLM's capture sizes: 1, 2, 4, then every multiple of 8 up to max_num_seqs.
Graphs share one memory pool and are captured largest first, so the pool is sized by the
largest bucket and the smaller ones reuse it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

log = logging.getLogger("fastx.engine")


def decode_buckets(max_num_seqs: int) -> list[int]:
    """Batch sizes a decode step is padded to; the last one is max_num_seqs itself."""
    sizes = [b for b in (1, 2, 4) if b < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return sizes + [max_num_seqs]


def bucket_for(n_seqs: int, buckets: list[int]) -> int:
    """The smallest bucket holding n_seqs sequences."""
    for size in buckets:
        if size >= n_seqs:
            return size
    raise ValueError(f"n_seqs: expected at most {buckets[-1]} sequences (max_num_seqs), got {n_seqs}")


class DecodeGraphs:
    """One captured decode step per bucket; `step(rows)` runs the forward of a bucket's padded step.

    `forward(rows)` must run the model on the persistent buffers' first `rows` rows and return
    the logits; it is called eagerly to warm up (Triton compiles there), then under capture.
    """

    def __init__(self, forward: Callable[[int], torch.Tensor], buckets: list[int], device: torch.device):
        self.forward = forward
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        with torch.cuda.device(device):
            for rows in sorted(buckets, reverse=True):
                # Warm up on a side stream (the documented pattern): compiles the kernels and lets
                # the caching allocator settle before capture.
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    forward(rows)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    logits = forward(rows)
                self.graphs[rows] = (graph, logits)
            torch.cuda.synchronize(device)
        log.info(
            "captured %d decode CUDA graphs (batch %s) in %.2f s", len(buckets), buckets, time.perf_counter() - started
        )

    def step(self, rows: int) -> torch.Tensor:
        """Replay the bucket's graph on what the buffers now hold; the logits (rows, V) it writes."""
        graph, logits = self.graphs[rows]
        graph.replay()
        return logits
