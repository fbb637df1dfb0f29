"""Safetensors checkpoints -> tensors, with every header checked before any data is touched.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names
to {dtype, shape, data_offsets}, then the raw data. The safetensors library reads the data
(memory-mapped); this module first validates the header itself so a broken file fails with a
ValueError that names the file and the tensor, instead of a library-specific exception, a huge
allocation or a silent misread.
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from fastx.checkpoints.hub import PICKLE_WEIGHTS

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Parse and validate a safetensors header; return {tensor name: {dtype, shape, data_offsets}}."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{path}: truncated safetensors file ({size} bytes, expected at least 8)")
            header_len = int.from_bytes(prefix, "little")
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise ValueError(f"{path}: header length {header_len} runs past the end of the {size}-byte file")
            raw = f.read(header_len)
    except OSError as exc:
        raise OSError(f"{path}: cannot read safetensors file ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header must be a JSON object, got {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: __metadata__ must be an object, got {type(metadata).__name__}")

    data_size = size - 8 - header_len
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{where}: expected keys dtype, shape, data_offsets, got {info!r:.200}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"{where}: shape must be a list of non-negative integers, got {shape!r:.200}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ValueError(f"{where}: data_offsets must be two integers, got {offsets!r:.200}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"{where}: data_offsets {offsets} outside the data section of {data_size} bytes")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise ValueError(f"{where}: {end - begin} bytes for shape {shape} of {dtype}, expected {nbytes}")
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{path}: tensors {n0!r} and {n1!r} overlap (bytes {b0}-{e0} and {b1}-{e1})")
    return header


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a checkpoint folder: model.safetensors, or the shards of its index."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{index}: expected a JSON object with a 'weight_map', could not read it ({exc})"
            ) from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: 'weight_map' must map tensor names to shard files")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard or not (folder / shard).is_file():
                raise OSError(f"{index}: shard {shard!r} is not a file in {folder}")
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    pickles = [p for p in PICKLE_WEIGHTS if (folder / p).exists()]
    detail = f" (it has {', '.join(pickles)}: pickle files, which fastx never loads)" if pickles else ""
    raise OSError(
        f"{folder}: no model.safetensors or model.safetensors.index.json{detail}; fastx loads safetensors only. "
        "Convert with transformers: AutoModel.from_pretrained(path).save_pretrained(out_dir, safe_serialization=True)"
    )


def iter_safetensors(
    path: str | os.PathLike,
    dtype: torch.dtype | None = None,
    read_copy: Callable[[str], bool] | None = None,
    destination: Callable[[str], torch.Tensor | None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from one validated file, one tensor at a time, without copying.

    Tensors are views of a private (copy-on-write) memory map of the file: loading reads no
    data, pages come in as the model touches them, and the weights never exist twice in
    memory. The safetensors library's get_tensor copies every tensor out of its map instead
    (measured on SmolLM2-135M: peak memory 2x transformers', which maps). Tensors converted to
    another `dtype` are the one copy a conversion needs. The header is fully validated by
    read_safetensors_header first, so every view below lies inside the file.

    `read_copy(name)` True: read that tensor with a plain file read into its own buffer instead.
    For pieces that are about to be concatenated (fused QKV, gate-up) this keeps their pages
    out of the process's map, so they do not stay resident next to the fused copy.
    `destination(name)` returning a tensor (contiguous, the file's dtype and size): the bytes are
    read straight into it (a slice of a preallocated fused parameter) and it is yielded.
    """
    path = Path(path)
    header = read_safetensors_header(path)
    with open(path, "rb") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if path.stat().st_size > 0 else None
        for name, info in header.items():
            torch_dtype = SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            count = (end - begin) // torch_dtype.itemsize
            target = destination(name) if destination is not None and count else None
            if count == 0:
                tensor = torch.empty(info["shape"], dtype=torch_dtype)
            elif target is None and not (read_copy is not None and read_copy(name)):
                tensor = torch.frombuffer(mapped, dtype=torch_dtype, count=count, offset=data_start + begin).view(
                    info["shape"]
                )
            else:  # a plain read: into the destination's memory, or into a buffer of its own
                if target is None:
                    target = torch.empty(count, dtype=torch_dtype)
                elif target.dtype != torch_dtype or target.numel() != count or not target.is_contiguous():
                    raise ValueError(
                        f"{path}: tensor {name!r} does not fit its destination {tuple(target.shape)} {target.dtype}"
                    )
                f.seek(data_start + begin)
                f.readinto(target.view(-1).view(torch.uint8).numpy())
                tensor = target.view(info["shape"])
            if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            yield name, tensor


def load_state_dict(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (single file or sharded), optionally cast to `dtype`."""
    state = {}
    for file in checkpoint_files(folder):
        for name, tensor in iter_safetensors(file, dtype):
            if name in state:
                raise ValueError(f"{file}: tensor {name!r} appears in more than one shard")
            state[name] = tensor
    return state
