"""fastx.ops: functional API with torch.nn.functional's signatures and semantics.

Each op runs its Triton kernel on CUDA tensors (or everywhere with FASTX_BACKEND=triton and
Triton's interpreter) and eager PyTorch otherwise; see fastx.ops._backend.
"""

from fastx.ops.activations import bias_gelu, gelu, silu, silu_and_mul
from fastx.ops.attention import scaled_dot_product_attention, varlen_attention
from fastx.ops.conv import conv2d
from fastx.ops.linear import linear, pack_linear_weights
from fastx.ops.norms import add_layer_norm, add_rms_norm, layer_norm, rms_norm
from fastx.ops.paged_attention import decode_num_splits, paged_decode_attention, write_kv_cache
from fastx.ops.rotary import RotaryAngles, rotary_angles, rotary_embedding

__all__ = [
    "layer_norm",
    "rms_norm",
    "add_layer_norm",
    "add_rms_norm",
    "gelu",
    "bias_gelu",
    "silu",
    "silu_and_mul",
    "RotaryAngles",
    "rotary_angles",
    "rotary_embedding",
    "conv2d",
    "linear",
    "pack_linear_weights",
    "scaled_dot_product_attention",
    "varlen_attention",
    "write_kv_cache",
    "paged_decode_attention",
    "decode_num_splits",
]
