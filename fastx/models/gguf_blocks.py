"""Loading a GGUF file with its weights kept in their block formats (fastx.ops.quant_linear).

Before the general loader runs (base.py), every projection and embedding whose GGUF tensors are in a
format fastx computes on (fastx.ops.gguf_dequant.BLOCK_FORMATS) is replaced on the meta-built model by
a QuantizedLinear / QuantizedEmbedding holding the file's rows; the loader then reads only what is left
(norms, biases, F32 projections) as ordinary parameters.
- Fused projections (qkv_proj, gate_up_proj) take their pieces' rows in order: pieces of one format are
  concatenated into one row group (one copy of their bytes, the file pages they came from are released),
  pieces of different formats stay separate row groups of the one module.
- A module with any piece in a format fastx has no dequantizer for (Q2_K, Q3_K, the IQ types) is left to
  the general loader, which dequantizes it with the `gguf` package into ordinary float parameters.
- F32 projections stay ordinary float parameters; F16/BF16 ones stay 16-bit row groups.
"""

from __future__ import annotations

import torch
from torch import nn

from fastx.checkpoints.gguf import GGUFCheckpoint, transformers_name
from fastx.ops.gguf_dequant import GGML_TYPE_IDS
from fastx.ops.quant_linear import DequantBuffer, QuantizedEmbedding, QuantizedLinear


def keep_gguf_blocks(model, checkpoint: GGUFCheckpoint, dtype: torch.dtype, device: torch.device) -> set[str]:
    """Replace the modules of meta-built `model` whose GGUF weights stay blocks; returns the GGUF tensor
    names consumed (the general loader skips them). `dtype` is the activations' (embedding output) dtype."""
    params = dict(model.named_parameters())
    pieces: dict[str, dict[int | None, tuple[str, str | None]]] = {}  # module -> {part: (gguf name, format)}
    for name, type_id, shape, _, _ in checkpoint.tensor_infos:
        target = transformers_name(name)
        if len(shape) != 2 or target is None or not target.endswith(".weight"):
            continue
        fused, part = model._packed_name(target, params)
        target = model._target_name(fused, params)
        if target is not None:
            pieces.setdefault(target.rpartition(".")[0], {})[part] = (name, GGML_TYPE_IDS.get(type_id))
    buffer = DequantBuffer()  # one dequantization buffer for the whole model
    kept: set[str] = set()
    for path, parts in pieces.items():
        module = model.get_submodule(path)
        ordered = _ordered(model, path, parts)
        formats = [fmt for _, fmt in ordered] if ordered else [None]
        if None in formats or all(fmt == "F32" for fmt in formats):
            continue  # dequantized (or read as fp32) by the general loader
        if isinstance(module, nn.Embedding) and len(ordered) == 1:
            ((name, fmt),) = ordered
            rows = _rows(checkpoint, name, module.num_embeddings, device)
            replacement = QuantizedEmbedding(fmt, rows, module.embedding_dim, dtype)
        elif isinstance(module, nn.Linear):
            groups = _merge([(fmt, checkpoint.raw_rows(name)) for name, fmt in ordered], checkpoint, ordered)
            groups = [(fmt, rows.to(device)) for fmt, rows in groups]
            bias = module.bias if module.bias is not None else False  # a meta parameter the loader fills
            try:
                replacement = QuantizedLinear(module.in_features, module.out_features, groups, bias, buffer)
            except ValueError as exc:
                raise ValueError(f"{checkpoint.path}: tensors {[n for n, _ in ordered]} for {path!r}: {exc}") from None
        else:
            continue
        owner, _, leaf = path.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, leaf, replacement)
        kept.update(name for name, _ in ordered)
    return kept


def _ordered(model, path: str, parts: dict) -> list[tuple[str, str | None]] | None:
    """The pieces of `path` in row order, or None when a fused module lacks one (the loader reports it)."""
    if None in parts:
        return [parts[None]]
    count = len(model.packed_modules[path.rpartition(".")[2]])
    return [parts[i] for i in range(count)] if all(i in parts for i in range(count)) else None


def _rows(checkpoint: GGUFCheckpoint, name: str, expected_rows: int, device) -> torch.Tensor:
    rows = checkpoint.raw_rows(name)
    if rows.shape[0] != expected_rows:
        raise ValueError(f"{checkpoint.path}: tensor {name!r} has {rows.shape[0]} rows, expected {expected_rows}")
    return rows.to(device)


def _merge(groups: list[tuple[str, torch.Tensor]], checkpoint: GGUFCheckpoint, ordered) -> list:
    """Concatenate neighbouring row groups of one format (their rows are whole blocks, so rows stack)."""
    merged: list[tuple[str, list[torch.Tensor]]] = []
    for fmt, rows in groups:
        if merged and merged[-1][0] == fmt and merged[-1][1][0].shape[1] == rows.shape[1]:
            merged[-1][1].append(rows)
        else:
            merged.append((fmt, [rows]))
    out = [(fmt, parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)) for fmt, parts in merged]
    if len(merged) < len(groups):  # the pieces were copied: the process keeps their bytes once
        checkpoint.release_pages([name for name, _ in ordered])
    return out


def _memory_available() -> int | None:
    """Bytes the kernel says new allocations can take without swapping (Linux), else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def keeps_blocks_by_default(checkpoint: GGUFCheckpoint, device: torch.device, shard_size: int = 1) -> bool:
    """With no `dtype=`, whether a GGUF's block weights stay blocks.

    On CUDA they do: the Triton kernels (fastx.kernels.quant_matmul) compute on them, and they are
    ~4-7x smaller than bf16. On a CPU the exact kept-block route (dequantize each layer, then the
    fp32 GEMM) measured 0.45x the tokens/s of dequantizing once at load (SmolLM2-135M Q4_1, 2-core
    EPYC), so a CPU dequantizes to fp32 unless those fp32 weights would take more than half of the
    memory available: then blocks are the only way the model fits, and they stay. `dtype="auto"`
    keeps them always. Under tensor parallelism each rank dequantizes its shard (the parallel layers
    slice float weights).
    """
    if shard_size > 1:
        return False
    if device.type == "cuda":
        return True
    fp32_bytes = sum(4 * _numel(shape) for _, _, shape, _, _ in checkpoint.tensor_infos)
    available = _memory_available()
    return available is not None and fp32_bytes > available // 2


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
