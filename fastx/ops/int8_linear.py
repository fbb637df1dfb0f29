"""Opt-in int8 projections on the CPU: torch's dynamically quantized GEMM (fbgemm / oneDNN, `quantization="int8"`).

Each weight row is quantized once to int8 with its own scale (symmetric, per output channel); at every
call the activations are quantized per tensor to 8 bits and the integer GEMM's int32 sums are scaled
back to fp32 (torch.ops.quantized.linear_dynamic, the op under torch.ao's dynamic Linear). Weight bytes
per token drop 4x against fp32, so batch-1 decode, which streams the weights, gets faster; results are
approximate (bench/bench_e2e_gguf.py reports logit cosine and greedy agreement against fp32).
NOTE: activations use all 8 bits where the CPU has VNNI (its u8 x s8 dot products sum into 32 bits) and
7 bits elsewhere (AVX2's VPMADDUBSW saturates 16-bit pairs at full range; torch.ao's default). On SmolLM2
(AVX-512 VNNI EPYC) the logit cosine against fp32 was 0.847 with 7 bits and 0.966 with 8.
NOTE: the MLP's down projection stays fp32 by default (FP32_MODULES): its input, silu(gate) * up, has
outliers that one per-tensor activation scale cannot cover; keeping it lifted SmolLM2's logit cosine
from 0.966 to 0.994.
"""

from __future__ import annotations

import torch
from torch import nn

from fastx.ops.linear import Linear

FP32_MODULES = ("down_proj",)


def _cpu_has_vnni() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


REDUCE_RANGE = not _cpu_has_vnni()


def int8_available() -> bool:
    return "x86" in torch.backends.quantized.supported_engines or "fbgemm" in torch.backends.quantized.supported_engines


class Int8DynamicLinear(nn.Module):
    """A Linear whose fp32 weight is replaced by a prepacked per-channel int8 copy (CPU only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
            raise ValueError(
                f"quantization='int8': expected a 2-D float32 CPU weight, got {weight.dtype} "
                f"{tuple(weight.shape)} on {weight.device}"
            )
        self.out_features, self.in_features = weight.shape
        scales = (weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127).double()
        zeros = torch.zeros(self.out_features, dtype=torch.long)
        qweight = torch.quantize_per_channel(weight.detach(), scales, zeros, 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())
        self.has_bias = bias is not None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, self.in_features).float().contiguous()  # (M, K)
        out = torch.ops.quantized.linear_dynamic(rows, self._packed, REDUCE_RANGE)
        return out.view(*input.shape[:-1], self.out_features).to(input.dtype)

    def project(self, input: torch.Tensor) -> torch.Tensor:
        if self.has_bias:
            raise ValueError("project: an int8 layer fuses its bias into the GEMM; call it instead")
        return self.forward(input)


def quantize_int8(model: nn.Module, fp32_modules: tuple[str, ...] = FP32_MODULES) -> int:
    """Replace every fastx Linear of a float32 CPU model by an Int8DynamicLinear, except those whose
    name ends in one of `fp32_modules` (see the module docstring); returns how many.

    A tied head becomes its own int8 copy (the embedding keeps the fp32 table it looks rows up in).
    ValueError, before changing anything, when the CPU engine is missing or a layer is not fp32 on the CPU.
    """
    if not int8_available():
        raise ValueError(
            f"quantization='int8': this torch build has no x86/fbgemm quantized engine "
            f"(supported: {torch.backends.quantized.supported_engines})"
        )
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, Linear) and name.rpartition(".")[2] not in fp32_modules
    ]
    for name, layer in layers:
        if layer.weight.device.type != "cpu" or layer.weight.dtype != torch.float32:
            raise ValueError(
                f"quantization='int8': expected float32 CPU weights, {name} is {layer.weight.dtype} on "
                f"{layer.weight.device} (load with dtype='float32', device='cpu')"
            )
    for name, layer in layers:
        owner, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, Int8DynamicLinear(layer.weight, layer.bias))
    return len(layers)
