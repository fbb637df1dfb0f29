"""Opt-in 4-bit projections on the CPU: torch's int4 weight-only GEMM (`quantization="int4"`).

Legend: M = rows of the input, N = out features, K = in features, G = GROUP values per group.

Each projection's weight is held as 4-bit values q in 0..15 in groups of G = 32 along K, every group with
its own scale and minimum (value = scale * q + minimum), packed by torch for its CPU kernel
(aten._weight_int4pack_mm_for_cpu, the op under torchao's int4 weight-only CPU layout). Weight bytes per
token drop ~6x against fp32 (0.5 byte a value + 4 bytes of bf16 scale and zero a group), so batch-1
decode, which streams the weights, gets faster.
- A GGUF projection in Q4_0, Q4_1 or Q4_K keeps the file's own 4-bit values: those formats are exactly
  such groups (fastx.ops.gguf_dequant.four_bit_groups); only their fp16 scales are rounded to bf16.
- Any other weight (fp32 from safetensors, GGUF Q5/Q6/Q8) is rounded to the nearest of 16 levels
  spanning its group's min..max (round-to-nearest, as gpt-fast's and torchao's int4 weight-only).
- The LM head stays 8-bit (Int8WeightLinear, one scale a row): a 4-bit head moves every logit, and the
  head is 1/6 of SmolLM2-135M's weight bytes. llama.cpp's 4-bit files keep theirs at 6-8 bits too.
NOTE: the kernel computes in bf16 (activations and scales rounded to bf16, fp32 sums, a bf16 result).
Its fp32 form ran ~20x slower than its bf16 form (a SmolLM2 decode step's projections: 339 vs 16 ms)
on a 2-core AVX2 EPYC, so bf16 it is; outputs are cast back to the input's dtype. Results are
approximate: bench/bench_e2e_gguf.py reports logit cosine and greedy agreement against fp32.
NOTE: the packing wants N a multiple of 16: other N are padded with zero rows and the output sliced.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32
_N_MULTIPLE = 16


def int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


def round_to_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float weight -> (q (N, K) uint8 in 0..15, scale (N, K / 32), minimum (N, K / 32)) float32.

    Each group's 16 levels span its min..max; a constant group gets scale 0 (every q 0, value = minimum).
    """
    n, k = weight.shape
    if k % GROUP:
        raise ValueError(f"weight: expected in_features a multiple of {GROUP} for int4 groups, got {k}")
    w = weight.detach().float().view(n, k // GROUP, GROUP)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = (hi - lo) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = ((w - lo.unsqueeze(-1)) / safe.unsqueeze(-1)).round_().clamp_(0, 15).to(torch.uint8)
    return q.view(n, k), scale, lo


class _WeightOnlyLinear(nn.Module):
    """forward = project (the subclass's GEMM) + the fp32 bias, added after the GEMM's own dtype."""

    bias: nn.Parameter | None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = self.project(input)
        return out if self.bias is None else out + self.bias.to(out.dtype)


class Int4Linear(_WeightOnlyLinear):
    """A projection held as packed 4-bit groups (CPU only); forward/project as fastx.ops.linear.Linear.

    `q` (N, K) uint8 in 0..15, `scale`/`minimum` (N, K / 32): value = scale * q + minimum; `bias` (N,) or None.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        n, k = q.shape
        if k % GROUP or scale.shape != (n, k // GROUP) or minimum.shape != scale.shape:
            raise ValueError(
                f"int4 weight: expected q (N, K) with K a multiple of {GROUP} and scale/minimum (N, K / {GROUP}), "
                f"got q {tuple(q.shape)}, scale {tuple(scale.shape)}, minimum {tuple(minimum.shape)}"
            )
        if q.device.type != "cpu":
            raise ValueError(f"quantization='int4': CPU only (torch's int4 CPU GEMM), got a weight on {q.device}")
        self.out_features, self.in_features = n, k
        pad = -n % _N_MULTIPLE
        if pad:  # zero rows: their outputs are sliced off
            q, scale, minimum = (torch.cat([t, t.new_zeros(pad, t.shape[1])]) for t in (q, scale, minimum))
        # The op computes (q - 8) * scale + zero per group: zero = minimum + 8 * scale.
        zero = minimum + 8 * scale
        # (K / G, N, 2), contiguous: the op reads it by raw offsets and ignores strides.
        scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().bfloat16()
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1))
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"

    def project(self, input: torch.Tensor) -> torch.Tensor:
        """input @ weight.T without the bias."""
        rows = input.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (M, K)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scales_and_zeros)
        out = out[:, : self.out_features].to(input.dtype)
        return out.view(*input.shape[:-1], self.out_features)


class Int8WeightLinear(_WeightOnlyLinear):
    """A projection held as int8 rows with one bf16 scale each (torch's int8 weight-only CPU GEMM)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight.device.type != "cpu" or weight.dim() != 2:
            raise ValueError(f"int8 weight: expected a 2-D CPU weight, got {tuple(weight.shape)} on {weight.device}")
        w = weight.detach().float()
        self.out_features, self.in_features = w.shape
        scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        self.register_buffer("qweight", (w / scale.unsqueeze(1)).round_().clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.bfloat16())
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per row"

    def project(self, input: torch.Tensor) -> torch.Tensor:
        rows = input.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales).to(input.dtype)
        return out.view(*input.shape[:-1], self.out_features)


HEAD_MODULES = ("lm_head",)


def _int4_layer(layer: nn.Module) -> Int4Linear:
    """An Int4Linear from a fastx Linear (float weight) or a QuantizedLinear (GGUF row groups)."""
    from fastx.ops.gguf_dequant import FOUR_BIT_FORMATS, dequantize, four_bit_groups
    from fastx.ops.quant_linear import QuantizedLinear

    if isinstance(layer, QuantizedLinear):
        parts = [
            four_bit_groups(rows, fmt) if fmt in FOUR_BIT_FORMATS else round_to_int4(dequantize(rows, fmt))
            for fmt, rows in layer.groups()
        ]
        q, scale, minimum = (torch.cat(pieces) for pieces in zip(*parts))
    else:
        q, scale, minimum = round_to_int4(layer.weight)
    return Int4Linear(q, scale, minimum, layer.bias)


def quantize_int4(model: nn.Module, head_modules: tuple[str, ...] = HEAD_MODULES) -> int:
    """Replace every fastx Linear / QuantizedLinear of a CPU model by an Int4Linear, and those whose name
    ends in one of `head_modules` by an Int8WeightLinear (see the module docstring); returns how many.

    A tied head becomes its own 8-bit copy (the embedding keeps the table it looks rows up in).
    ValueError, before changing anything, when torch lacks the op, a layer is not on the CPU, or its
    in_features is not a multiple of 32.
    """
    from fastx.ops.linear import Linear
    from fastx.ops.quant_linear import QuantizedLinear

    if not int4_available():
        raise ValueError(f"quantization='int4': torch {torch.__version__} has no int4 CPU GEMM")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (Linear, QuantizedLinear))]
    for name, layer in layers:
        device = layer.weight.device if isinstance(layer, Linear) else layer.qweight_0.device
        if device.type != "cpu":
            raise ValueError(f"quantization='int4': CPU only, {name} is on {device} (load with device='cpu')")
        if layer.in_features % GROUP:
            raise ValueError(
                f"quantization='int4': {name} has in_features {layer.in_features}, expected a multiple of {GROUP}"
            )
    for name, layer in layers:
        owner, _, leaf = name.rpartition(".")
        if leaf in head_modules:
            weight = layer.weight if isinstance(layer, Linear) else layer.dequantized_weight()
            replacement = Int8WeightLinear(weight, layer.bias)
        else:
            replacement = _int4_layer(layer)
        setattr(model.get_submodule(owner) if owner else model, leaf, replacement)
    return len(layers)
