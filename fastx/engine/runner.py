"""Runs one scheduled step on the model: builds the step's metadata, owns the paged KV cache.

Legend: T = tokens computed this step, B = sequences, L = layers, P = block size,
K = kv heads, D = head dim.
"""

from __future__ import annotations

import torch

from fastx.engine.scheduler import ScheduledBatch
from fastx.models.attention import AttentionMetadata


def kv_bytes_per_block(model, block_size: int, dtype: torch.dtype) -> int:
    """K and V of every layer for one block of tokens."""
    return 2 * model.num_layers * block_size * model.num_kv_heads * model.head_dim * torch.finfo(dtype).bits // 8


class ModelRunner:
    def __init__(self, model, num_blocks: int, block_size: int):
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

    def _metadata(self, batch: ScheduledBatch) -> tuple[torch.Tensor, AttentionMetadata]:
        ids, positions, slots, q_lens, k_lens, contexts = [], [], [], [0], [0], []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = seq.num_computed_tokens
            span = range(start, start + n)
            ids += seq.token_ids[start : start + n]
            positions += span
            slots += [seq.block_table[p // self.block_size] * self.block_size + p % self.block_size for p in span]
            q_lens.append(q_lens[-1] + n)
            contexts.append(start + n)
            k_lens.append(k_lens[-1] + start + n)
        width = max(len(s.block_table) for s in batch.seqs)
        tables = [s.block_table + [0] * (width - len(s.block_table)) for s in batch.seqs]
        dev = self.device
        meta = AttentionMetadata(
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            cu_seqlens_q=torch.tensor(q_lens, dtype=torch.int32, device=dev),
            cu_seqlens_k=torch.tensor(k_lens, dtype=torch.int32, device=dev),
            max_seqlen_q=max(batch.num_tokens),
            max_seqlen_k=max(contexts),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            context_lens=torch.tensor(contexts, dtype=torch.int32, device=dev),
            is_decode=batch.is_decode,
        )
        return torch.tensor(ids, dtype=torch.long, device=dev), meta

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate shared blocks before a sequence writes into its copy."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.device)
        dst = torch.tensor([d for _, d in copies], device=self.device)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Compute the step; return logits (N, V), one row per `batch.draws`.

        Reads the sequences and writes only the KV cache: their progress is the scheduler's to advance.
        """
        self.copy_blocks(batch.block_copies)
        input_ids, meta = self._metadata(batch)
        hidden = self.model.forward_packed(input_ids, meta, self.kv_caches)  # (T, E)
        if not batch.sample_rows:
            return hidden.new_empty(0, 0)
        logits = self.model.compute_logits(hidden[batch.sample_rows])
        # The head runs once per distinct row: fork children reuse their parent's logits as they are.
        return logits[batch.draw_rows] if batch.forks else logits
