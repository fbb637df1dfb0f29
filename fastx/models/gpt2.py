"""GPT-2 decoders (GPT2Model and GPT2LMHeadModel), with or without a paged KV cache.

Legend: B = batch, L = padded length, T = tokens of the step (packed), E = n_embd, H = heads,
D = head dim, I = MLP width (n_inner), V = vocab, P = tokens per cache block.

Two entry points share one code path (`forward_packed`):
- transformers-compatible `forward(input_ids (B, L), attention_mask, position_ids)`: the padded
  batch is packed (no compute on padding), run without a cache, and unpacked (zeros at pads);
- the engine's `forward_packed(input_ids (T,), meta, kv_caches)`: per-step AttentionMetadata
  (positions, slot mapping, block tables) and one (k_cache, v_cache) per layer.
Blocks are pre-norm; each residual add is fused into the LayerNorm that follows it (the next
block's ln_1, or ln_f), as vLLM does, so a block returns (mlp output, residual stream).
Checkpoint names follow transformers'; GPT-2's Conv1D weights (in, out) are transposed to
nn.Linear's (out, in) at load, so c_attn stays one fused QKV GEMM (fastx.ops.linear).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

import fastx.distributed.layers as tp
import fastx.ops as ops
from fastx.models.attention import AttentionMetadata, causal_attention
from fastx.models.base import GenerationMixin, PreTrainedModel
from fastx.models.config import check_multiple, check_supported
from fastx.models.outputs import BaseModelOutput, CausalLMOutput

GELU_APPROXIMATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}

# Conv1D weights stored (in, out) in GPT-2 checkpoints, with or without the "transformer." prefix.
_CONV1D_WEIGHT = re.compile(r"(^|\.)h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")


@dataclass
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list | None = 50256
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False

    def validate(self, source: str) -> None:
        check_multiple(source, self, "n_embd", "n_head")
        check_supported(source, self, "activation_function", GELU_APPROXIMATION)
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if getattr(self, flag):
                raise ValueError(f"{source}: {flag}=True is not supported by fastx's GPT-2 (only False)")

    @property
    def inner_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.num_heads = tp.current_shard().heads(config.n_head)  # this rank's, under tensor parallelism
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        # query, key, value in one GEMM
        self.c_attn = tp.qkv_linear(config.n_embd, self.head_dim, config.n_head, config.n_head, bias=True)
        self.c_proj = tp.row_linear(config.n_embd, config.n_embd, bias=True)

    def forward(self, x, meta: AttentionMetadata, kv_cache, output_attentions: bool):  # (T, E)
        q, k, v = self.c_attn(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)  # 3 x (T, H, D)
        out, probs = causal_attention(q, k, v, meta, kv_cache, scale=self.scale, output_attentions=output_attentions)
        return self.c_proj(out.reshape(x.shape[0], -1)), probs


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.c_fc = tp.column_linear(config.n_embd, (config.inner_size,), bias=True)
        self.c_proj = tp.row_linear(config.inner_size, config.n_embd, bias=True)
        self.approximate = GELU_APPROXIMATION[config.activation_function]

    def forward(self, x):  # (T, E) -> (T, I) -> (T, E)
        # GELU with the bias add fused into it: the GEMM runs without its bias.
        return self.c_proj(ops.bias_gelu(self.c_fc.project(x), self.c_fc.bias, self.approximate))


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x, residual, meta, kv_cache, output_attentions):
        """x: the previous block's MLP output (T, E), or the embeddings when residual is None.

        Returns (this block's MLP output, the residual stream before adding it, attention probs
        or None): the caller fuses that add into the next LayerNorm (next ln_1, or ln_f).
        """
        if residual is None:
            residual = x
            h = ops.layer_norm(x, x.shape[-1:], self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
        else:
            h, residual = ops.add_layer_norm(x, residual, x.shape[-1:], self.ln_1.weight, self.ln_1.bias, self.ln_1.eps)
        attended, probs = self.attn(h, meta, kv_cache, output_attentions)
        h, residual = ops.add_layer_norm(
            attended, residual, x.shape[-1:], self.ln_2.weight, self.ln_2.bias, self.ln_2.eps
        )
        return self.mlp(h), residual, probs


class _GPT2Base(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"

    def checkpoint_tensors(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        if _CONV1D_WEIGHT.search(name):
            if tensor.dim() != 2:
                raise ValueError(f"{name}: expected a 2-D Conv1D weight (in, out), got shape {tuple(tensor.shape)}")
            # Conv1D (in, out) -> nn.Linear (out, in); a view, so that a tensor-parallel rank copies
            # only its slice (the loader makes every parameter contiguous).
            tensor = tensor.t()
        yield name, tensor

    @property
    def num_layers(self) -> int:
        return self.config.n_layer

    @property
    def num_query_heads(self) -> int:  # this rank's, under tensor parallelism
        return self.shard.heads(self.config.n_head)

    @property
    def num_kv_heads(self) -> int:
        return self.shard.heads(self.config.n_head)

    @property
    def head_dim(self) -> int:
        return self.config.head_dim


def _padded_metadata(config: GPT2Config, input_ids, attention_mask, position_ids) -> AttentionMetadata:
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape (batch, length), got {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if position_ids is None and length > config.n_positions:
        raise ValueError(f"input_ids: length {length} exceeds n_positions {config.n_positions}")
    meta = AttentionMetadata.for_padded_batch(attention_mask, position_ids, batch, length, input_ids.device)
    if meta.positions.numel():
        low, high = int(meta.positions.min()), int(meta.positions.max())  # user input: checked once, here
        if low < 0 or high >= config.n_positions:
            raise ValueError(
                f"position_ids: expected positions in [0, {config.n_positions}) (n_positions), got [{low}, {high}]"
            )
    return meta


class GPT2Model(_GPT2Base):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.wte = tp.vocab_embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def run(self, input_ids, meta, kv_caches=None, output_hidden_states=False, output_attentions=False):
        """(T,) ids -> (hidden (T, E) after ln_f, residual streams per block or None, probs per layer or None)."""
        if meta.max_seqlen_k > self.config.n_positions:
            # The engine's positions are < each sequence's context length, so this bounds them
            # without reading `positions` back from the device.
            raise ValueError(
                f"meta: context of {meta.max_seqlen_k} tokens exceeds n_positions {self.config.n_positions}"
            )
        if kv_caches is not None and len(kv_caches) != self.config.n_layer:
            raise ValueError(
                f"kv_caches: expected {self.config.n_layer} (k_cache, v_cache) pairs, got {len(kv_caches)}"
            )
        x = self.wte(input_ids) + self.wpe(meta.positions)  # (T, E)
        residual, streams, attentions = None, [x], []
        for i, block in enumerate(self.h):
            x, residual, probs = block(
                x, residual, meta, kv_caches[i] if kv_caches is not None else None, output_attentions
            )
            if output_hidden_states:
                streams.append(x + residual)  # residual stream after block i (fused away otherwise)
            attentions.append(probs)
        hidden, _ = ops.add_layer_norm(x, residual, x.shape[-1:], self.ln_f.weight, self.ln_f.bias, self.ln_f.eps)
        if output_hidden_states:
            streams[-1] = hidden  # transformers' last entry is after ln_f
        return hidden, (streams if output_hidden_states else None), (attentions if output_attentions else None)

    def forward_packed(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches=None) -> torch.Tensor:
        """Engine entry: (T,) token ids of the step -> (T, E) after ln_f; writes K/V into kv_caches."""
        return self.run(input_ids, meta, kv_caches)[0]

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
        position_ids: torch.Tensor | None = None,  # (B, L) or (1, L); default: padded column index
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput:
        meta = _padded_metadata(self.config, input_ids, attention_mask, position_ids)
        hidden, streams, attentions = self.run(
            meta.packed.pack(input_ids), meta, None, output_hidden_states, output_attentions
        )
        unpack = meta.packed.unpack
        return BaseModelOutput(
            last_hidden_state=unpack(hidden),
            hidden_states=tuple(unpack(s) for s in streams) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class GPT2LMHeadModel(GenerationMixin, _GPT2Base):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = tp.lm_head(config.n_embd, config.vocab_size)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward_packed(self, input_ids: torch.Tensor, meta: AttentionMetadata, kv_caches=None) -> torch.Tensor:
        """Engine entry: (T,) -> hidden (T, E); call compute_logits on the rows that need them."""
        return self.transformer.forward_packed(input_ids, meta, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, E) -> (N, V)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        output_hidden_states=False,
        output_attentions=False,
        return_dict=True,
    ) -> CausalLMOutput:
        meta = _padded_metadata(self.config, input_ids, attention_mask, position_ids)
        hidden, streams, attentions = self.transformer.run(
            meta.packed.pack(input_ids), meta, None, output_hidden_states, output_attentions
        )
        unpack = meta.packed.unpack
        return CausalLMOutput(
            logits=unpack(self.compute_logits(hidden)),  # logits of real tokens only, zeros at pads
            hidden_states=tuple(unpack(s) for s in streams) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
