"""Which GGUF type each tensor gets: `fastx quantize --type`, llama.cpp's mixes and its shape fallbacks.

A plain type (F16, Q8_0, Q4_K, ...) goes to every 2-D weight, as `llama-quantize --pure` does; the
mixes Q4_K_M and Q5_K_M follow llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp) for a Llama:
the output matrix (or the token embedding when it is tied to the output) in Q6_K, attn_v and ffn_down
of the layers `use_more_bits` picks in Q6_K. 1-D tensors (norms, biases) stay F32. A row length that is
not a multiple of the type's block size falls back as llama.cpp's `tensor_type_fallback` does.
"""

from __future__ import annotations

import re

import gguf

T = gguf.GGMLQuantizationType
# --type -> (the type of the 2-D weights, general.file_type)
TYPES = {
    "F32": (T.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (T.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "Q8_0": (T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (T.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (T.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1),
    "Q5_0": (T.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0),
    "Q5_1": (T.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1),
    "Q4_K": (T.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_S),
    "Q5_K": (T.Q5_K, gguf.LlamaFileType.MOSTLY_Q5_K_S),
    "Q6_K": (T.Q6_K, gguf.LlamaFileType.MOSTLY_Q6_K),
    "Q4_K_M": (T.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_M),
    "Q5_K_M": (T.Q5_K, gguf.LlamaFileType.MOSTLY_Q5_K_M),
}
MIXES = ("Q4_K_M", "Q5_K_M")
_UNQUANTIZED = (T.F32, T.F16, T.BF16)
# llama.cpp's tensor_type_fallback: a 256-block type whose block does not divide the row -> a 32-block one.
FALLBACKS = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def parse_type(name: str) -> str:
    """The canonical --type name (case-insensitive), or a ValueError listing the choices."""
    key = str(name).upper()
    if key not in TYPES:
        raise ValueError(f"--type: expected one of {', '.join(TYPES)}, got {name!r}")
    return key


def _use_more_bits(layer: int, layers: int) -> bool:
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def _mix_type(kind: str, gguf_name: str, default: T, layers: int, tied: bool) -> T:
    """llama_tensor_get_type_impl for Q4_K_M / Q5_K_M on a dense Llama (no experts, not Falcon)."""
    match = re.match(r"blk\.(\d+)\.(\w+)\.weight$", gguf_name)
    if gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight"):
        return T.Q6_K  # the row-length test (-> Q8_0) is applied by the caller, which knows the shape
    if match is None:
        return default
    layer, role = int(match[1]), match[2]
    if role == "attn_v":
        if _use_more_bits(layer, layers):
            return T.Q6_K
        if layers == 80 and default in (T.Q3_K, T.Q4_K):  # llama.cpp's LLM_TYPE_70B bump
            return T.Q5_K
    if role == "ffn_down" and _use_more_bits(layer, layers):
        return T.Q6_K
    return default


def tensor_type(kind: str, gguf_name: str, shape: tuple[int, ...], layers: int, tied: bool) -> tuple[T, T | None]:
    """(the GGUF type for this tensor, the type it fell back from or None). `shape` is torch's (rows, cols)."""
    default, _ = TYPES[kind]
    if len(shape) < 2 or not gguf_name.endswith(".weight") or "_norm." in gguf_name:
        return T.F32, None
    if default in _UNQUANTIZED:
        return default, None
    cols = shape[-1]
    chosen = default
    if kind in MIXES:
        chosen = _mix_type(kind, gguf_name, default, layers, tied)
        if chosen == T.Q6_K and (gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")):
            chosen = T.Q8_0 if cols % gguf.GGML_QUANT_SIZES[default][0] else T.Q6_K
    block = gguf.GGML_QUANT_SIZES[chosen][0]
    if cols % block == 0:
        return chosen, None
    fallback = FALLBACKS.get(chosen, chosen)
    if cols % gguf.GGML_QUANT_SIZES[fallback][0]:
        fallback = T.F16  # llama.cpp: "must use F16 due to unusual shape"
    return fallback, chosen
