"""ConvNeXt (ConvNextModel and ConvNextForImageClassification).

Legend: B = batch, C = channels of the current stage, H, W = spatial size of the current stage.
Activations are kept in channels_last memory: the depthwise 7x7 (ops.conv2d's Triton path)
returns it, so the (B, C, H, W) -> (B, H, W, C) permute before each per-pixel LayerNorm and
Linear is a free view, and the channels-first LayerNorms of the stem and the downsampling
layers normalise contiguous rows. Outputs are returned as contiguous NCHW, as transformers
gives them. Parameter names follow transformers' checkpoints. Drop path is training-only and
absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import fastx.ops as ops
from fastx.models.base import PreTrainedModel
from fastx.models.config import check_supported
from fastx.models.outputs import BaseModelOutput, ImageClassifierOutput

GELU_APPROXIMATION = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh"}
# transformers hard-codes eps=1e-6 for every norm inside the network; config.layer_norm_eps
# only reaches the final pooled LayerNorm.
INNER_EPS = 1e-6


@dataclass
class ConvNextConfig:
    num_channels: int = 3
    patch_size: int = 4
    num_stages: int = 4
    hidden_sizes: list[int] | None = None
    depths: list[int] | None = None
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    layer_scale_init_value: float = 1e-6
    num_labels: int | None = None
    id2label: dict | None = None

    def __post_init__(self):
        # transformers' defaults (convnext-tiny) when the config omits them.
        self.hidden_sizes = list(self.hidden_sizes) if self.hidden_sizes is not None else [96, 192, 384, 768]
        self.depths = list(self.depths) if self.depths is not None else [3, 3, 9, 3]

    def validate(self, source: str) -> None:
        for name in ("hidden_sizes", "depths"):
            values = getattr(self, name)
            if not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= (1 if name == "hidden_sizes" else 0)
                for v in values
            ):
                raise ValueError(f"{source}: field {name!r} must be a list of positive ints, got {values!r}")
            if len(values) != self.num_stages:
                raise ValueError(
                    f"{source}: field {name!r} has {len(values)} entries, expected num_stages = {self.num_stages}"
                )
        check_supported(source, self, "hidden_act", GELU_APPROXIMATION)
        if self.num_stages < 1 or self.patch_size < 1:
            raise ValueError(
                f"{source}: num_stages and patch_size must be positive, got {self.num_stages} and {self.patch_size}"
            )

    @property
    def labels(self) -> int:
        if self.num_labels is not None:
            return self.num_labels
        return len(self.id2label) if self.id2label else 2


def channels_first_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over C of a (B, C, H, W) tensor: per pixel, in the NHWC view (contiguous for channels_last)."""
    y = ops.layer_norm(x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)  # (B, H, W, C)
    return y.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last memory


class ConvNextEmbeddings(nn.Module):
    def __init__(self, config: ConvNextConfig):
        super().__init__()
        # Stem: non-overlapping 4x4 patches (a strided conv, one GEMM) + channels-first LayerNorm.
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_sizes[0], kernel_size=config.patch_size, stride=config.patch_size
        )
        self.layernorm = nn.LayerNorm(config.hidden_sizes[0], eps=INNER_EPS)

    def forward(self, pixel_values):  # (B, 3, H0, W0) -> (B, C, H0 / 4, W0 / 4)
        return channels_first_layer_norm(self.layernorm, self.patch_embeddings(pixel_values))


class ConvNextLayer(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear 4C -> GELU -> Linear C -> * layer scale -> + residual."""

    def __init__(self, config: ConvNextConfig, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.layernorm = nn.LayerNorm(dim, eps=INNER_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # Layer scale ("gamma"); absent when the model was trained without it.
        self.layer_scale_parameter = nn.Parameter(torch.empty(dim)) if config.layer_scale_init_value > 0 else None
        self.approximate = GELU_APPROXIMATION[config.hidden_act]

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        dim = x.shape[1]
        y = ops.conv2d(x, self.dwconv.weight, self.dwconv.bias, padding=3, groups=dim)  # channels_last memory
        y = ops.layer_norm(
            y.permute(0, 2, 3, 1), (dim,), self.layernorm.weight, self.layernorm.bias, self.layernorm.eps
        )  # (B, H, W, C)
        y = ops.bias_gelu(
            nn.functional.linear(y, self.pwconv1.weight), self.pwconv1.bias, self.approximate
        )  # (B, H, W, 4C)
        y = nn.functional.linear(y, self.pwconv2.weight, self.pwconv2.bias)  # (B, H, W, C)
        residual = x.permute(0, 2, 3, 1)  # (B, H, W, C) view
        # residual + gamma * y in one elementwise pass.
        out = (
            residual + y
            if self.layer_scale_parameter is None
            else torch.addcmul(residual, y, self.layer_scale_parameter)
        )
        return out.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last memory


class ConvNextStage(nn.Module):
    def __init__(self, config: ConvNextConfig, in_channels: int, out_channels: int, stride: int, depth: int):
        super().__init__()
        if in_channels != out_channels or stride > 1:
            # channels-first LayerNorm, then a 2x2 stride-2 conv (strided: eager conv, a GEMM).
            self.downsampling_layer = nn.ModuleList(
                [
                    nn.LayerNorm(in_channels, eps=INNER_EPS),
                    nn.Conv2d(in_channels, out_channels, kernel_size=stride, stride=stride),
                ]
            )
        else:
            self.downsampling_layer = nn.ModuleList()
        self.layers = nn.ModuleList(ConvNextLayer(config, out_channels) for _ in range(depth))

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)
        if len(self.downsampling_layer):
            norm, conv = self.downsampling_layer
            x = conv(channels_first_layer_norm(norm, x))
        for layer in self.layers:
            x = layer(x)
        return x


class ConvNextEncoder(nn.Module):
    def __init__(self, config: ConvNextConfig):
        super().__init__()
        sizes = config.hidden_sizes
        self.stages = nn.ModuleList(
            ConvNextStage(config, sizes[max(i - 1, 0)], sizes[i], stride=2 if i > 0 else 1, depth=config.depths[i])
            for i in range(config.num_stages)
        )


class ConvNextModel(PreTrainedModel):
    config_class = ConvNextConfig
    base_model_prefix = "convnext"

    def __init__(self, config: ConvNextConfig):
        super().__init__()
        self.config = config
        self.embeddings = ConvNextEmbeddings(config)
        self.encoder = ConvNextEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)

    def forward(
        self,
        pixel_values: torch.Tensor,  # (B, C, H, W)
        output_hidden_states: bool = False,
        output_attentions: bool = False,  # ConvNeXt has no attention: accepted and ignored, as transformers does
        return_dict: bool = True,
    ) -> BaseModelOutput:
        channels = self.config.num_channels
        if pixel_values.dim() != 4 or pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values: expected shape (batch, {channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        weight = self.embeddings.patch_embeddings.weight
        x = pixel_values.to(weight.dtype).contiguous(memory_format=torch.channels_last)
        x = self.embeddings(x)
        hidden_states = [x]
        for stage in self.encoder.stages:
            x = stage(x)
            hidden_states.append(x)
        pooled_input = x.mean(dim=(-2, -1))  # global average pool: (B, C)
        norm = self.layernorm
        pooled = ops.layer_norm(pooled_input, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return BaseModelOutput(
            last_hidden_state=x.contiguous(),
            pooler_output=pooled,
            hidden_states=tuple(h.contiguous() for h in hidden_states) if output_hidden_states else None,
        )


class ConvNextForImageClassification(PreTrainedModel):
    config_class = ConvNextConfig
    base_model_prefix = "convnext"

    def __init__(self, config: ConvNextConfig):
        super().__init__()
        self.config = config
        self.convnext = ConvNextModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.labels)

    def forward(self, pixel_values, output_hidden_states=False, output_attentions=False, return_dict=True):
        out = self.convnext(pixel_values, output_hidden_states)
        return ImageClassifierOutput(self.classifier(out.pooler_output), out.hidden_states)
