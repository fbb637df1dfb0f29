"""The Llama family's hyperparameters (config.json -> LlamaConfig) and rotary angles (default, linear, llama3).

Legend: D = head dim, R = rotary dims (<= D), P = max positions.
Mistral and Qwen2 configs read into the same class; their differences are fields here
(sliding windows, biases), validated at load time with errors that name the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastx.models.config import check_multiple, check_supported

ROPE_TYPES = ("default", "linear", "llama3")
ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass
class LlamaConfig:
    """config.json of model_type llama, mistral or qwen2 (the fields inference uses).

    RoPE comes from either layout: transformers v4 (rope_theta + rope_scaling) or v5
    (rope_parameters). `sliding_window` is honoured only up to its length: a longer sequence
    raises ValueError at forward time (the kernels have no sliding-window mask).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: = num_attention_heads (multi-head attention)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # transformers v4: {"rope_type" (or "type"), "factor", ...}
    rope_parameters: dict | None = None  # transformers v5: {"rope_theta", "rope_type", "factor", ...}
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = "llama"
    sliding_window: int | None = None
    use_sliding_window: bool | None = None  # Qwen2 only: its window applies only when true
    layer_types: list[str] | None = None  # Qwen2: "full_attention" / "sliding_attention" per layer
    partial_rotary_factor: float = 1.0

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads

    def validate(self, source: str) -> None:
        check_supported(source, self, "hidden_act", ("silu",))
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{source}: {name} must be positive, got {getattr(self, name)}")
        check_multiple(source, self, "num_attention_heads", "num_key_value_heads")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(f"{source}: sliding_window must be positive or null, got {self.sliding_window}")
        theta, rope_type, params = self.rope()
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"{source}: rope_scaling/rope_type {rope_type!r} not supported (supported: {', '.join(ROPE_TYPES)})"
            )
        missing = [key for key in ROPE_REQUIRED[rope_type] if key not in params]
        if missing:
            raise ValueError(f"{source}: rope_scaling/rope_parameters of type {rope_type!r} lacks {', '.join(missing)}")
        for key in ROPE_REQUIRED[rope_type]:
            if not isinstance(params[key], (int, float)) or isinstance(params[key], bool) or params[key] <= 0:
                raise ValueError(
                    f"{source}: rope_scaling/rope_parameters {key} must be a positive number, got {params[key]!r}"
                )
        if not isinstance(theta, (int, float)) or theta <= 0:
            raise ValueError(f"{source}: rope_theta must be a positive number, got {theta!r}")
        rotary = self.rotary_dim
        if rotary % 2 or not 0 < rotary <= self.head_dim:
            raise ValueError(
                f"{source}: partial_rotary_factor {self.partial_rotary_factor} gives {rotary} rotary dims "
                f"of head_dim {self.head_dim}: expected an even number in 2..{self.head_dim}"
            )

    def rope(self) -> tuple[float, str, dict]:
        """(theta, rope type, parameters) from either the v4 (rope_theta + rope_scaling) or the v5 layout."""
        params = {**(self.rope_scaling or {}), **(self.rope_parameters or {})}
        theta = params.get("rope_theta", self.rope_theta)
        rope_type = params.get("rope_type", params.get("type", "default"))
        return theta, rope_type, params

    @property
    def rotary_dim(self) -> int:
        factor = self.rope()[2].get("partial_rotary_factor", self.partial_rotary_factor)
        return int(self.head_dim * factor)

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.model_type == "qwen2"

    @property
    def o_bias(self) -> bool:
        return self.attention_bias and self.model_type != "qwen2"

    @property
    def attention_window(self) -> int | None:
        """The sliding window some layer applies, or None (transformers' Qwen2 rules for use_sliding_window)."""
        if self.sliding_window is None:
            return None
        if self.model_type == "qwen2" and not self.use_sliding_window:
            return None
        if self.layer_types is not None and "sliding_attention" not in self.layer_types:
            return None
        return self.sliding_window


def rope_inverse_frequencies(config: LlamaConfig, device=None) -> torch.Tensor:
    """(R/2,) fp32 inverse frequencies, computed as transformers' rope init functions do."""
    theta, rope_type, params = config.rope()
    dim = config.rotary_dim
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    if rope_type == "linear":  # position interpolation: positions / factor, folded into the frequencies
        return inv_freq / params["factor"]
    if rope_type == "llama3":  # Llama 3.1: long wavelengths / factor, short kept, a smooth blend between
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_context = params["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    return inv_freq


def rope_cache(config: LlamaConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (P, R/2) fp32: the product position * frequency in fp32, as transformers forms it."""
    inv_freq = rope_inverse_frequencies(config, device)
    positions = torch.arange(config.max_position_embeddings, device=device, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]  # (P, R/2)
    return freqs.cos(), freqs.sin()
