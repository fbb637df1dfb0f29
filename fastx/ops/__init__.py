"""fastx.ops: functional API with torch.nn.functional's signatures and semantics.

Each op runs its Triton kernel on CUDA tensors (or everywhere with FASTX_BACKEND=triton and
Triton's interpreter) and eager PyTorch otherwise; see fastx.ops._backend.
"""

from fastx.ops.norms import add_layer_norm, add_rms_norm, layer_norm, rms_norm

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"]
