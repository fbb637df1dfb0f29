"""Llama-family decoders (Llama 2/3, SmolLM2, TinyLlama; Mistral and Qwen2 share the file).

Legend: B = batch, L = padded length, T = tokens of the step (packed), E = hidden size,
H = query heads, K = kv heads, D = head dim, R = rotary dims (<= D), F = intermediate size,
V = vocab, P = max positions.

Two entry points, one code path:
- `forward(input_ids (B, L), attention_mask, ...)`, transformers-compatible: the padded batch is
  packed (no compute on padding, see packing.py), run without a KV cache, and unpacked;
- `forward_packed(input_ids (T,), meta, kv_caches)`, the engine's: `meta` (attention.py)
  describes the step (positions, slot mapping, block tables), each layer gets its
  (k_cache, v_cache) pair.
Parameter names follow transformers' checkpoints; q/k/v and gate/up are packed into
`qkv_proj` and `gate_up_proj` at load time (one GEMM each). The residual add is fused into the
next RMSNorm (vLLM's fused_add_rms_norm): a layer returns its MLP output and the residual, and
the following norm sums them.

Family differences: Qwen2 has biases on q/k/v (none on o_proj); Llama's `attention_bias` puts
them on all four. Mistral (and Qwen2 with use_sliding_window) declare a sliding window: the
attention kernels have no sliding-window mask, so a sequence longer than `sliding_window`
raises ValueError at forward time; shorter sequences are exact (the window hides nothing).
"""

from __future__ import annotations

import torch
from torch import nn

import fastx.distributed.layers as tp
import fastx.ops as ops
from fastx.models.attention import AttentionMetadata, causal_attention
from fastx.models.base import GenerationMixin, PreTrainedModel
from fastx.models.llama_config import LlamaConfig, rope_cache
from fastx.models.outputs import BaseModelOutput, CausalLMOutput
from fastx.ops.quant_linear import QuantizedEmbedding, QuantizedLinear


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x, residual=None):  # (T, E) -> (normed, the residual stream x (+ residual))
        if residual is None:
            return ops.rms_norm(x, x.shape[-1:], self.weight, self.eps), x
        return ops.add_rms_norm(x, residual, x.shape[-1:], self.weight, self.eps)


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        shard = tp.current_shard()  # this rank's heads under tensor parallelism; all of them on one device
        self.num_heads, self.num_kv_heads, self.head_dim = (
            shard.heads(config.num_attention_heads),
            shard.kv_heads(config.num_key_value_heads),
            config.head_dim,
        )
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        heads = (config.num_attention_heads, config.num_key_value_heads)
        self.qkv_proj = tp.qkv_linear(config.hidden_size, self.head_dim, *heads, bias=config.qkv_bias)
        self.o_proj = tp.row_linear(config.num_attention_heads * self.head_dim, config.hidden_size, config.o_bias)
        self.scale = self.head_dim**-0.5

    def forward(self, x, angles: ops.RotaryAngles, meta: AttentionMetadata, kv_cache, output_attentions: bool):
        tokens = x.shape[0]  # x (T, E)
        qkv = self.qkv_proj(x)  # (T, (H + 2K) D)
        # q and k are adjacent in each row: one rotation call covers both heads' sets.
        qk = qkv[:, : self.q_size + self.kv_size].view(tokens, self.num_heads + self.num_kv_heads, self.head_dim)
        qk, _ = ops.rotary_embedding(qk, None, *angles)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)  # (T, H, D), (T, K, D)
        v = qkv[:, self.q_size + self.kv_size :].view(tokens, self.num_kv_heads, self.head_dim)
        out, probs = causal_attention(q, k, v, meta, kv_cache, self.scale, output_attentions)  # (T, H, D)
        return self.o_proj(out.reshape(tokens, self.q_size)), probs


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        width = config.intermediate_size
        self.gate_up_proj = tp.column_linear(config.hidden_size, (width, width), bias=config.mlp_bias)
        self.down_proj = tp.row_linear(width, config.hidden_size, bias=config.mlp_bias)

    def forward(self, x):  # (T, E) -> (T, 2F) -> silu(gate) * up (T, F) -> (T, E)
        return self.down_proj(ops.silu_and_mul(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, angles, meta, kv_cache, output_attentions):
        """x: the previous layer's MLP output (the embeddings when residual is None).

        Returns (MLP output, residual, probs); their sum is the residual stream after this layer.
        """
        h, residual = self.input_layernorm(x, residual)  # residual: the stream entering this layer
        h, probs = self.self_attn(h, angles, meta, kv_cache, output_attentions)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual, probs


class _LlamaBase(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    packed_modules = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
    # transformers v4 saved each layer's rotary inv_freq in some checkpoints; it is rebuilt here.
    ignored_checkpoint_keys = PreTrainedModel.ignored_checkpoint_keys + (r"\.rotary_emb\.inv_freq$",)

    config: LlamaConfig

    # Sizes the engine reads to allocate its KV cache.
    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def num_query_heads(self) -> int:  # this rank's, under tensor parallelism (the KV cache holds its heads)
        return self.shard.heads(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return self.shard.kv_heads(self.config.num_key_value_heads)

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    def _padded_meta(self, input_ids, attention_mask, position_ids) -> AttentionMetadata:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, length), got {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        meta = AttentionMetadata.for_padded_batch(attention_mask, position_ids, batch, length, input_ids.device)
        # Default positions are column indices (up to L - 1 even for a short left-padded row).
        last = length - 1 if position_ids is None else (int(meta.positions.max()) if meta.positions.numel() else 0)
        if last >= self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids: position {last} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings} (the size of the rotary cache)"
            )
        return meta


class LlamaModel(_LlamaBase):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = tp.vocab_embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        if torch.empty(0).is_meta:
            # Under from_pretrained (built on the meta device) init_buffers builds the cache after
            # loading; computing it here on meta would only import torch's reference ops (~2 s).
            cos = sin = None
        else:
            cos, sin = rope_cache(config)
        self.register_buffer("rope_cos", cos, persistent=False)  # (P, R/2) fp32
        self.register_buffer("rope_sin", sin, persistent=False)

    def init_buffers(self, device: torch.device) -> None:
        self.rope_cos, self.rope_sin = rope_cache(self.config, device)

    def checkpoint_tensors(self, name, tensor):
        # A tied checkpoint may hold the shared matrix under the head's name only (safetensors'
        # save_model keeps one name per shared tensor): it is the input embedding here.
        if name == "lm_head.weight" and self.config.tie_word_embeddings:
            name = "embed_tokens.weight"
        yield name, tensor

    def _check_context(self, meta: AttentionMetadata) -> None:
        window = self.config.attention_window
        if window is not None and meta.max_seqlen_k > window:
            raise ValueError(
                f"sequence length {meta.max_seqlen_k} exceeds sliding_window {window}: fastx's attention kernels "
                f"have no sliding-window mask, so only sequences of at most {window} tokens are exact"
            )
        if meta.max_seqlen_k > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence length {meta.max_seqlen_k} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings} (the size of the rotary cache)"
            )

    def _run(self, input_ids, meta, kv_caches, output_hidden_states=False, output_attentions=False):
        """(T,) ids -> (hidden after the final norm (T, E), hidden states, attentions)."""
        self._check_context(meta)
        if kv_caches is not None and len(kv_caches) != len(self.layers):
            raise ValueError(f"kv_caches: expected {len(self.layers)} (k_cache, v_cache) pairs, got {len(kv_caches)}")
        x, residual = self.embed_tokens(input_ids), None  # (T, E)
        angles = ops.rotary_angles(self.rope_cos, self.rope_sin, meta.positions)  # once for every layer
        hidden_states, attentions = [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:  # transformers' entry i: the residual stream entering layer i
                hidden_states.append(x if residual is None else x + residual)
            kv_cache = kv_caches[i] if kv_caches is not None else None
            x, residual, probs = layer(x, residual, angles, meta, kv_cache, output_attentions)
            attentions.append(probs)
        x, _ = self.norm(x, residual)
        hidden_states.append(x)  # transformers' last entry is after the final norm
        return x, hidden_states, attentions

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Engine entry: (T,) token ids of the step -> (T, E) hidden states after the final norm."""
        return self._run(input_ids, meta, kv_caches)[0]

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, L), 1 = real token
        position_ids: torch.Tensor | None = None,  # (B, L) or (1, L); default: column index
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput:
        meta = self._padded_meta(input_ids, attention_mask, position_ids)
        packed = meta.packed
        x, hidden_states, attentions = self._run(
            packed.pack(input_ids), meta, None, output_hidden_states, output_attentions
        )
        return BaseModelOutput(
            last_hidden_state=packed.unpack(x),
            hidden_states=tuple(packed.unpack(h) for h in hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class LlamaForCausalLM(GenerationMixin, _LlamaBase):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = tp.lm_head(config.hidden_size, config.vocab_size)

    def tie_weights(self) -> None:
        if not self.config.tie_word_embeddings:
            return
        embed = self.model.embed_tokens
        if isinstance(embed, QuantizedEmbedding):  # GGUF blocks kept: the head reads the same blocks
            buffers = [m.buffer for m in self.modules() if isinstance(m, QuantizedLinear)]
            self.lm_head = embed.as_linear(buffers[0] if buffers else None)
        elif embed.weight.is_meta and not self.lm_head.weight.is_meta:
            embed.weight = self.lm_head.weight  # the checkpoint kept the shared matrix under the head's name only
        else:
            self.lm_head.weight = embed.weight

    def init_buffers(self, device: torch.device) -> None:
        self.model.init_buffers(device)

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Engine entry: (T,) token ids -> (T, E) hidden states after the final norm (see compute_logits)."""
        return self.model.forward_packed(input_ids, meta, kv_caches)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, E) final hidden states (e.g. each sequence's last token) -> (N, V) logits."""
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ) -> CausalLMOutput:
        meta = self._padded_meta(input_ids, attention_mask, position_ids)
        packed = meta.packed
        x, hidden_states, attentions = self.model._run(
            packed.pack(input_ids), meta, None, output_hidden_states, output_attentions
        )
        return CausalLMOutput(
            logits=packed.unpack(self.compute_logits(x)),  # (B, L, V), zeros at padding
            hidden_states=tuple(packed.unpack(h) for h in hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )
