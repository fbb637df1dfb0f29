"""Causal self-attention for decoders, with or without a paged KV cache, driven by explicit metadata.

Legend: B = sequences, T = new tokens of the step (packed), H = query heads, K = kv heads,
D = head dim, P = tokens per cache block.

One code path serves both callers:
- transformers-style `model(input_ids, attention_mask)`: no cache; the padded batch is packed
  and `AttentionMetadata.for_padded_batch` describes it (prefill of every sequence from 0);
- the generation engine: the runner fills an `AttentionMetadata` per step (positions, slot
  mapping, block tables, context lengths) and passes each layer its (k_cache, v_cache).
Per-step metadata is an argument, never module-level state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

import fastx.ops as ops
from fastx.models.packing import PackedBatch, packed_attention


@dataclass(slots=True)
class AttentionMetadata:
    positions: torch.Tensor  # (T,) int64: position of each new token in its sequence
    cu_seqlens_q: torch.Tensor  # (B + 1,) int32: new tokens per sequence, cumulative
    cu_seqlens_k: torch.Tensor  # (B + 1,) int32: context (cached + new) per sequence, cumulative
    max_seqlen_q: int
    max_seqlen_k: int
    slot_mapping: torch.Tensor | None = None  # (T,) int64 cache slot of each new token (-1: skip)
    block_tables: torch.Tensor | None = None  # (B, max_blocks) int32
    context_lens: torch.Tensor | None = None  # (B,) int32: context per sequence (decode)
    is_decode: bool = False  # every sequence has exactly one new token
    # Decode kernel's splits per context; the engine fixes it per batch bucket so a captured
    # step's grid never changes. None: sized by the kernel launcher.
    decode_splits: int | None = None
    packed: PackedBatch | None = None  # set for padded-batch calls: to unpack outputs

    def to(self, device: torch.device | str) -> AttentionMetadata:
        """The same step's metadata with every tensor on `device` (ints and flags unchanged)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return dataclasses.replace(self, **moved)

    @property
    def varlen_lengths(self) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k): varlen_attention's length arguments."""
        return self.cu_seqlens_q, self.cu_seqlens_k, self.max_seqlen_q, self.max_seqlen_k

    @classmethod
    def for_padded_batch(
        cls, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, length: int, device
    ) -> AttentionMetadata:
        """Cache-free prefill of a padded (B, L) batch: only real tokens are computed.

        Default positions are the padded column indices, as in transformers' forward without
        position_ids (generation passes positions counted from each sequence's first real token).
        """
        packed = PackedBatch.from_mask(attention_mask, batch, length, device)
        if position_ids is not None:
            positions = packed.pack(position_ids.to(device).expand(batch, length))
        else:
            positions = packed.indices % length
        return cls(
            positions=positions,
            cu_seqlens_q=packed.cu_seqlens,
            cu_seqlens_k=packed.cu_seqlens,
            max_seqlen_q=packed.max_seqlen,
            max_seqlen_k=packed.max_seqlen,
            packed=packed,
        )


def causal_attention(
    q: torch.Tensor,  # (T, H, D), rotary already applied
    k: torch.Tensor,  # (T, K, D)
    v: torch.Tensor,  # (T, K, D)
    meta: AttentionMetadata,
    kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,  # (num_blocks, P, K, D) each
    scale: float | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of the step's new tokens over their sequence's context; returns (out (T, H, D), probs)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if kv_cache is None:
        if output_attentions:
            if meta.packed is None:
                raise ValueError("output_attentions: needs a padded-batch forward (no KV cache)")
            return packed_attention(q, k, v, meta.packed, causal=True, scale=scale, output_attentions=True)
        out = ops.varlen_attention(q, k, v, *meta.varlen_lengths, causal=True, scale=scale)
        return out, None
    if output_attentions:
        raise ValueError("output_attentions: not available with a KV cache (the kernels never form probabilities)")
    k_cache, v_cache = kv_cache
    # The runner built this metadata from the block manager and every layer shares it: the
    # eager ops' per-call value checks would repeat the same work 2 x layers times per step.
    ops.write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping, validate=False)
    if meta.is_decode:
        out = ops.paged_decode_attention(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.context_lens,
            scale=scale,
            max_context_len=meta.max_seqlen_k,
            num_splits=meta.decode_splits,
            validate=False,
        )
    else:  # prefill (possibly chunked, possibly after a cached prefix): new queries over the paged context
        lengths = meta.varlen_lengths
        out = ops.varlen_attention(
            q, k_cache, v_cache, *lengths, causal=True, scale=scale, block_table=meta.block_tables
        )
    return out, None
