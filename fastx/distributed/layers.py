"""Tensor-parallel layers in the Megatron layout, as vLLM shards them, and the hook models build them through.

Legend: T = tokens, E = hidden size, H = query heads, K = kv heads, D = head dim, F = the MLP's
width, V = vocab, N = ranks, Vp = vocab rows per rank (ceil(V / N)).

- ColumnParallelLinear: the output rows split across ranks; a fused projection (q/k/v, gate/up) is
  split per component, so each rank holds [its q heads; its k heads; its v heads] and runs the
  same per-head code as one device. K/V heads are replicated when there are fewer than N.
- RowParallelLinear: the input columns split; each rank's partial product is summed by one
  all-reduce, then the (replicated) bias is added once.
- VocabParallelEmbedding / ParallelLMHead: the vocabulary rows split; the embedding sums the
  ranks' lookups (one all-reduce), the head gathers each rank's logits onto rank 0, which samples.
Each layer slices the full checkpoint tensor it is given (`shard_tensor`, called by the loader on
a memory-mapped view) and keeps a copy of its own rows only.

Models build their projections through `column_linear` / `row_linear` / `vocab_embedding` /
`lm_head`, which read the `Shard` of the model being built (set by `building(shard)` around the
constructor); outside a tensor-parallel build they return the plain single-device layers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastx.ops.linear import Linear


@dataclass(frozen=True)
class Shard:
    """This process's place in a tensor-parallel group: rank `rank` of `size` (size 1: one device)."""

    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed group of the model's collectives

    def heads(self, total: int) -> int:
        """Query heads on this rank (the count was checked to divide by `size`)."""
        return total // self.size

    def kv_heads(self, total: int) -> int:
        """K/V heads on this rank: a share of them, or one replicated head when there are fewer than N."""
        return max(1, total // self.size)

    def kv_head_start(self, total: int) -> int:
        if total >= self.size:
            return self.rank * (total // self.size)
        return self.rank * total // self.size  # N / K ranks share each head (Megatron's replication)


_ONE_DEVICE = Shard()
_BUILDING: contextvars.ContextVar[Shard | None] = contextvars.ContextVar("fastx_tensor_parallel_shard", default=None)


@contextlib.contextmanager
def building(shard: Shard) -> Iterator[None]:
    """Models constructed inside the block are built for `shard` (their layers read it once, at construction)."""
    token = _BUILDING.set(shard)
    try:
        yield
    finally:
        _BUILDING.reset(token)


def current_shard() -> Shard:
    return _BUILDING.get() or _ONE_DEVICE


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    # A copy of this rank's rows: the loader's memory map (and the other ranks' pages) can go.
    return tensor.clone(memory_format=torch.contiguous_format)


class ColumnParallelLinear(Linear):
    """y_r = x @ W_r.T + b_r for this rank's output rows: one slice (start, count) of each of `parts`."""

    def __init__(self, in_features: int, parts: Sequence[tuple[int, int, int]], bias: bool, shard: Shard):
        # parts: (full rows, first row of this rank, rows of this rank) per fused component
        super().__init__(in_features, sum(count for _, _, count in parts), bias=bias)
        self.parts, self.shard = tuple(parts), shard

    def shard_tensor(self, leaf: str, tensor: torch.Tensor, part: int | None) -> torch.Tensor:
        """This rank's rows of a full weight/bias: of component `part`, or of the fused tensor when None."""
        if part is not None:
            full, start, count = self.parts[part]
            return _copy(tensor[start : start + count]) if tensor.shape[0] == full else tensor
        if tensor.shape[0] != sum(full for full, _, _ in self.parts):
            return tensor  # a misshapen tensor: the loader's shape check names it
        pieces, offset = [], 0
        for full, start, count in self.parts:
            pieces.append(tensor[offset + start : offset + start + count])
            offset += full
        return _copy(torch.cat(pieces)) if len(pieces) > 1 else _copy(pieces[0])


class RowParallelLinear(Linear):
    """y = sum_r x_r @ W_r.T + b: this rank's input columns, one all-reduce, the bias added once."""

    def __init__(self, in_features: int, out_features: int, bias: bool, shard: Shard):
        super().__init__(in_features // shard.size, out_features, bias=bias)
        self.in_start, self.full_in, self.shard = shard.rank * self.in_features, in_features, shard

    def shard_tensor(self, leaf: str, tensor: torch.Tensor, part: int | None) -> torch.Tensor:
        if leaf != "weight" or tensor.dim() != 2 or tensor.shape[1] != self.full_in:
            return tensor  # the bias is replicated
        return _copy(tensor[:, self.in_start : self.in_start + self.in_features])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # The small-batch GEMM returns a transposed view; the collective needs contiguous memory.
        out = self._gemm(input, None).contiguous()
        dist.all_reduce(out, group=self.shard.group)
        return out if self.bias is None else out.add_(self.bias)


def _vocab_rows(vocab: int, shard: Shard) -> tuple[int, int, int]:
    """(rows per rank Vp, this rank's first id, its real rows): the last rank's tail is zero padding."""
    per_rank = -(-vocab // shard.size)
    start = min(shard.rank * per_rank, vocab)
    return per_rank, start, min(per_rank, vocab - start)


def _vocab_shard(tensor: torch.Tensor, vocab: int, rows: tuple[int, int, int]) -> torch.Tensor:
    per_rank, start, count = rows
    if tensor.dim() != 2 or tensor.shape[0] != vocab:
        return tensor
    local = tensor.new_zeros(per_rank, tensor.shape[1])
    local[:count] = tensor[start : start + count]
    return local


class VocabParallelEmbedding(nn.Embedding):
    """This rank's Vp rows of the table; ids outside them look up zeros, and the ranks' results are summed."""

    def __init__(self, num_embeddings: int, embedding_dim: int, shard: Shard):
        self.vocab, self.rows = num_embeddings, _vocab_rows(num_embeddings, shard)
        super().__init__(self.rows[0], embedding_dim)
        self.shard = shard

    def shard_tensor(self, leaf: str, tensor: torch.Tensor, part: int | None) -> torch.Tensor:
        return _vocab_shard(tensor, self.vocab, self.rows)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, E)
        _, start, count = self.rows
        local = input_ids - start
        outside = (local < 0) | (local >= count)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside[:, None], 0.0)
        dist.all_reduce(out, group=self.shard.group)
        return out


class ParallelLMHead(Linear):
    """Logits of this rank's Vp vocabulary rows, gathered onto rank 0 as (N, V); other ranks get their slice."""

    def __init__(self, in_features: int, vocab: int, shard: Shard):
        self.vocab, self.rows = vocab, _vocab_rows(vocab, shard)
        super().__init__(in_features, self.rows[0], bias=False)
        self.shard = shard

    def shard_tensor(self, leaf: str, tensor: torch.Tensor, part: int | None) -> torch.Tensor:
        return _vocab_shard(tensor, self.vocab, self.rows)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, E) -> (N, V) on rank 0
        local = self._gemm(hidden, None).contiguous()  # (N, Vp)
        group = self.shard.group
        root = 0 if group is None else dist.get_global_rank(group, 0)
        if self.shard.rank != 0:
            dist.gather(local, None, dst=root, group=group)
            return local
        slices = [torch.empty_like(local) for _ in range(self.shard.size)]
        dist.gather(local, slices, dst=root, group=group)
        return torch.cat(slices, dim=1)[:, : self.vocab]


# -- the hook the model constructors call -------------------------------------------------------------
def column_linear(in_features: int, sizes: Sequence[int], bias: bool) -> nn.Linear:
    """A projection whose output is the fused components `sizes`, each split evenly across ranks."""
    shard = current_shard()
    if shard.size == 1:
        return Linear(in_features, sum(sizes), bias=bias)
    parts = [(size, shard.rank * (size // shard.size), size // shard.size) for size in sizes]
    return ColumnParallelLinear(in_features, parts, bias, shard)


def qkv_linear(in_features: int, head_dim: int, heads: int, kv_heads: int, bias: bool) -> nn.Linear:
    """Fused q/k/v: this rank's query heads, then its K/V heads (replicated when fewer than the ranks)."""
    shard = current_shard()
    if shard.size == 1:
        return Linear(in_features, (heads + 2 * kv_heads) * head_dim, bias=bias)
    q = (heads * head_dim, shard.rank * shard.heads(heads) * head_dim, shard.heads(heads) * head_dim)
    kv = (kv_heads * head_dim, shard.kv_head_start(kv_heads) * head_dim, shard.kv_heads(kv_heads) * head_dim)
    return ColumnParallelLinear(in_features, [q, kv, kv], bias, shard)


def row_linear(in_features: int, out_features: int, bias: bool) -> nn.Linear:
    shard = current_shard()
    if shard.size == 1:
        return Linear(in_features, out_features, bias=bias)
    return RowParallelLinear(in_features, out_features, bias, shard)


def vocab_embedding(vocab: int, dim: int) -> nn.Embedding:
    shard = current_shard()
    return nn.Embedding(vocab, dim) if shard.size == 1 else VocabParallelEmbedding(vocab, dim, shard)


def lm_head(dim: int, vocab: int) -> nn.Linear:
    shard = current_shard()
    return Linear(dim, vocab, bias=False) if shard.size == 1 else ParallelLMHead(dim, vocab, shard)
