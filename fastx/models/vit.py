"""Vision Transformer (ViTModel and ViTForImageClassification).

Legend: B = batch, C = image channels, P = patch size, N = patches per image, L = N + 1 tokens
(the [CLS] token first), T = B * L rows, E = hidden size, H = heads, D = head dim.
Every image has the same number of tokens, so the batch is one full-length PackedBatch and
every layer works on (T, E) rows. Pre-norm layers: the residual add that precedes each norm is
fused into it (ops.add_layer_norm), including the previous layer's MLP residual and the final
layernorm. Parameter names follow transformers' checkpoints; query/key/value are packed into
one `qkv` projection at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import fastx.ops as ops
from fastx.models.base import PreTrainedModel
from fastx.models.config import check_multiple, check_supported
from fastx.models.outputs import BaseModelOutput, ImageClassifierOutput
from fastx.models.packing import PackedBatch, packed_attention

GELU_APPROXIMATION = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}


def _pair(value: int | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass
class ViTConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 224
    patch_size: int | list[int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    num_labels: int | None = None
    id2label: dict | None = None

    def validate(self, source: str) -> None:
        check_multiple(source, self, "hidden_size", "num_attention_heads")
        check_supported(source, self, "hidden_act", GELU_APPROXIMATION)
        if self.pooler_act != "tanh":
            raise ValueError(f"{source}: pooler_act {self.pooler_act!r} not supported (only 'tanh')")
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if isinstance(value, list) and (len(value) != 2 or not all(isinstance(v, int) for v in value)):
                raise ValueError(f"{source}: field {name!r} must be an int or a pair of ints, got {value!r}")
        (ih, iw), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
        if min(ih, iw, ph, pw) <= 0 or ih % ph or iw % pw:
            raise ValueError(
                f"{source}: image_size {self.image_size} is not a positive multiple of patch_size {self.patch_size}"
            )

    @property
    def labels(self) -> int:
        if self.num_labels is not None:
            return self.num_labels
        return len(self.id2label) if self.id2label else 2


class ViTPatchEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.image_size, self.patch_size = _pair(config.image_size), _pair(config.patch_size)
        self.num_patches = (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1])
        # A strided convolution with kernel = stride = P is one GEMM over the patches (cuDNN).
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, pixel_values):  # (B, C, H, W) -> (B, N, E)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(1, 1, config.hidden_size))
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(
            torch.empty(1, self.patch_embeddings.num_patches + 1, config.hidden_size)
        )

    def forward(self, pixel_values):  # (B, C, H, W) -> (B, L, E)
        patches = self.patch_embeddings(pixel_values)  # (B, N, E)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (B, 1, E)
        return torch.cat((cls, patches), dim=1) + self.position_embeddings


class ViTSelfAttention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(
            config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias
        )  # query, key, value packed

    def forward(self, x, batch: PackedBatch, output_attentions: bool):  # (T, E)
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)  # 3 x (T, H, D)
        out, probs = packed_attention(q, k, v, batch, causal=False, output_attentions=output_attentions)
        return out.reshape(x.shape), probs


class ViTSelfOutput(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class ViTAttention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = ViTSelfAttention(config)  # transformers' names: attention.attention.*, attention.output.*
        self.output = ViTSelfOutput(config)

    def forward(self, x, batch, output_attentions):  # (T, E) -> (T, E), no residual (the caller fuses it)
        attended, probs = self.attention(x, batch, output_attentions)
        return self.output.dense(attended), probs


class ViTIntermediate(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.approximate = GELU_APPROXIMATION[config.hidden_act]

    def forward(self, x):  # GELU with the bias add fused into it: the GEMM runs without its bias.
        return ops.bias_gelu(nn.functional.linear(x, self.dense.weight), self.dense.bias, self.approximate)


class ViTOutput(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


def _add_norm(norm: nn.LayerNorm, delta: torch.Tensor | None, residual: torch.Tensor):
    """(norm(residual + delta), residual + delta); delta None means nothing is pending."""
    if delta is None:
        return ops.layer_norm(residual, residual.shape[-1:], norm.weight, norm.bias, norm.eps), residual
    return ops.add_layer_norm(delta, residual, residual.shape[-1:], norm.weight, norm.bias, norm.eps)


class ViTLayer(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = ViTAttention(config)
        self.intermediate = ViTIntermediate(config)
        self.output = ViTOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, residual, delta, batch, output_attentions):
        """This layer's input is residual + delta (delta: the previous layer's MLP output, or None),
        summed inside the first norm. Returns (layer input, residual, MLP output, probs): the
        MLP output is left for the next norm to add."""
        normed, residual = _add_norm(self.layernorm_before, delta, residual)
        layer_input = residual
        attended, probs = self.attention(normed, batch, output_attentions)
        normed, residual = _add_norm(self.layernorm_after, attended, residual)
        return layer_input, residual, self.output.dense(self.intermediate(normed)), probs


class ViTEncoder(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))


class ViTPooler(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_output_size or config.hidden_size)

    def forward(self, hidden):  # (B, L, E) -> (B, E'): the [CLS] token
        return torch.tanh(self.dense(hidden[:, 0]))


class ViTModel(PreTrainedModel):
    config_class = ViTConfig
    base_model_prefix = "vit"
    optional_modules = ("pooler",)
    packed_modules = {"qkv": ("query", "key", "value")}
    # SimMIM checkpoints carry a mask token, which inference without bool_masked_pos never reads.
    ignored_checkpoint_keys = PreTrainedModel.ignored_checkpoint_keys + (r"(^|\.)embeddings\.mask_token$",)

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None

    def forward(
        self,
        pixel_values: torch.Tensor,  # (B, C, H, W)
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        return_dict: bool = True,
    ) -> BaseModelOutput:
        config = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1] != config.num_channels:
            raise ValueError(
                f"pixel_values: expected shape (batch, {config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}"
            )
        if tuple(pixel_values.shape[2:]) != self.embeddings.patch_embeddings.image_size:
            raise ValueError(
                f"pixel_values: expected image size {self.embeddings.patch_embeddings.image_size} (the model's "
                f"image_size; position embeddings are not interpolated), got {tuple(pixel_values.shape[2:])}"
            )
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype)
        x = self.embeddings(pixel_values)  # (B, L, E)
        batch, length, width = x.shape
        packed = PackedBatch.from_mask(None, batch, length, x.device)  # every image is full length
        residual, delta = x.reshape(batch * length, width), None  # (T, E)

        hidden_states, attentions = [], []
        for layer in self.encoder.layer:
            layer_input, residual, delta, probs = layer(residual, delta, packed, output_attentions)
            hidden_states.append(layer_input)
            attentions.append(probs)
        last, residual = _add_norm(self.layernorm, delta, residual)
        hidden_states.append(residual)

        last = last.view(batch, length, width)
        pooled = self.pooler(last) if self.pooler is not None else None
        return BaseModelOutput(
            last_hidden_state=last,
            pooler_output=pooled,
            hidden_states=tuple(h.view(batch, length, width) for h in hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
        )


class ViTForImageClassification(PreTrainedModel):
    config_class = ViTConfig
    base_model_prefix = "vit"
    packed_modules = ViTModel.packed_modules
    # The classifier reads the [CLS] token of the final layernorm, never the pooler.
    ignored_checkpoint_keys = ViTModel.ignored_checkpoint_keys + (r"^(vit\.)?pooler\.",)

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.labels)

    def forward(self, pixel_values, output_hidden_states=False, output_attentions=False, return_dict=True):
        out = self.vit(pixel_values, output_hidden_states, output_attentions)
        logits = self.classifier(out.last_hidden_state[:, 0])  # (B, labels)
        return ImageClassifierOutput(logits, out.hidden_states, out.attentions)
