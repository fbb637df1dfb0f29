"""Persistent step inputs: the one writer of what a step hands the model (ids, positions, slots, tables).

Legend: T = token rows of a step, B = sequence rows, W = block-table width (blocks of the longest
sequence the engine admits).

Every step writes into the same tensors instead of building new ones from Python lists:
- the model and its kernels see the same addresses every step, which a captured CUDA graph
  needs (it replays the launches with the pointers it recorded);
- on CUDA the host side is pinned memory and the copy to the device is non-blocking, so the
  host never waits for the GPU here. It may reuse the staging memory on the next step because
  every step ends with one blocking transfer (the sampled tokens), after which these copies
  have completed.
On a CPU the staging tensors are the device tensors: no copy at all.

A decode step may be padded to a bucket of B rows: padded rows have context length 0 (the
decode kernel writes zeros for them) and slot -1 (no K/V is written), so they change nothing.
"""

from __future__ import annotations

import numpy as np
import torch

from fastx.engine.scheduler import ScheduledBatch
from fastx.models.attention import AttentionMetadata


class _Staged:
    """A device tensor, its host staging tensor and a numpy view of the host side (fast list writes)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, fill: int = 0):
        on_cuda = device.type == "cuda"
        self.host = torch.full(shape, fill, dtype=dtype, pin_memory=on_cuda)
        self.device = torch.full(shape, fill, dtype=dtype, device=device) if on_cuda else self.host
        self.np = self.host.numpy()

    def upload(self, rows: int) -> torch.Tensor:
        """The first `rows` rows on the device (copied from the staging side when they differ)."""
        if self.device is not self.host:
            self.device[:rows].copy_(self.host[:rows], non_blocking=True)
        return self.device[:rows]


class StepBuffers:
    def __init__(self, max_tokens: int, max_seqs: int, max_blocks_per_seq: int, block_size: int, device):
        device = torch.device(device)
        self.block_size = block_size
        self.max_tokens, self.max_seqs = max_tokens, max_seqs
        self.input_ids = _Staged((max_tokens,), torch.long, device)
        self.positions = _Staged((max_tokens,), torch.long, device)
        self.slot_mapping = _Staged((max_tokens,), torch.long, device, fill=-1)
        self.cu_seqlens_q = _Staged((max_seqs + 1,), torch.int32, device)
        self.cu_seqlens_k = _Staged((max_seqs + 1,), torch.int32, device)
        self.context_lens = _Staged((max_seqs,), torch.int32, device)
        # Entries past a sequence's last block are never read (the kernels stop at its context
        # length), so rows are only written as far as each table reaches.
        self.block_tables = _Staged((max_seqs, max_blocks_per_seq), torch.int32, device)

    def write(self, batch: ScheduledBatch, rows: int | None = None) -> tuple[torch.Tensor, AttentionMetadata]:
        """Write the step's inputs; return (input ids (T,), metadata) as views of the buffers.

        `rows` pads a decode step to that many sequences (a bucket); prefill steps are never padded.
        """
        n_seqs = len(batch.seqs)
        rows = n_seqs if rows is None else rows
        if not batch.is_decode and rows != n_seqs:
            raise ValueError(f"rows: a prefill step is never padded, got {rows} rows for {n_seqs} sequences")
        n_tokens = sum(batch.num_tokens)
        t_rows = rows if batch.is_decode else n_tokens
        if t_rows > self.max_tokens or rows > self.max_seqs:
            raise ValueError(
                f"batch: expected at most {self.max_tokens} tokens and {self.max_seqs} sequences, "
                f"got {t_rows} tokens and {rows} sequences"
            )
        ids, positions, slots = self.input_ids.np, self.positions.np, self.slot_mapping.np
        contexts, table_rows = self.context_lens.np, self.block_tables.np
        cu_q, cu_k = self.cu_seqlens_q.np, self.cu_seqlens_k.np
        size = self.block_size
        t = 0
        for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_tokens)):
            start = seq.num_computed_tokens
            table = seq.block_table
            if n == 1:  # a decode row: scalar writes (numpy's array setup would cost more)
                ids[t], positions[t] = seq.token_ids[start], start
                slots[t] = table[start // size] * size + start % size
            else:
                ids[t : t + n] = seq.token_ids[start : start + n]
                span = np.arange(start, start + n)
                positions[t : t + n] = span
                slots[t : t + n] = np.asarray(table, dtype=np.int64)[span // size] * size + span % size
            table_rows[i, : len(table)] = table
            contexts[i] = start + n
            cu_q[i + 1] = cu_q[i] + n
            cu_k[i + 1] = cu_k[i] + start + n
            t += n
        # Padded decode rows: an empty context and no cache write (stale values from a larger step go).
        ids[t:t_rows], positions[t:t_rows], slots[t:t_rows] = 0, 0, -1
        contexts[n_seqs:rows] = 0
        cu_q[n_seqs + 1 : rows + 1] = cu_q[n_seqs]
        cu_k[n_seqs + 1 : rows + 1] = cu_k[n_seqs]
        width = max(len(s.block_table) for s in batch.seqs)
        meta = self._metadata(t_rows, rows, max(batch.num_tokens), int(contexts[:n_seqs].max()), batch.is_decode, width)
        return self.input_ids.upload(t_rows), meta

    def empty_decode(self, rows: int) -> tuple[torch.Tensor, AttentionMetadata]:
        """A decode step of `rows` padded rows (what a CUDA graph is captured on): it reads and writes nothing."""
        self.input_ids.np[:rows], self.positions.np[:rows], self.slot_mapping.np[:rows] = 0, 0, -1
        self.context_lens.np[:rows], self.cu_seqlens_q.np[: rows + 1], self.cu_seqlens_k.np[: rows + 1] = 0, 0, 0
        meta = self._metadata(rows, rows, max_seqlen_q=1, max_seqlen_k=0, is_decode=True, width=None)
        return self.input_ids.upload(rows), meta

    def _metadata(self, t_rows, rows, max_seqlen_q, max_seqlen_k, is_decode, width) -> AttentionMetadata:
        """Upload the written rows; the metadata views them. Decode reads the full-width table (one
        stride for every step a graph replays); prefill the `width` columns in use."""
        tables = self.block_tables.upload(rows)
        return AttentionMetadata(
            positions=self.positions.upload(t_rows),
            cu_seqlens_q=self.cu_seqlens_q.upload(rows + 1),
            cu_seqlens_k=self.cu_seqlens_k.upload(rows + 1),
            max_seqlen_q=max_seqlen_q,
            max_seqlen_k=max_seqlen_k,
            slot_mapping=self.slot_mapping.upload(t_rows),
            block_tables=tables if is_decode else tables[:, :width],
            context_lens=self.context_lens.upload(rows),
            is_decode=is_decode,
        )
