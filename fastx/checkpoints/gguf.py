"""GGUF checkpoints (llama.cpp's single-file format) -> a config dict, transformers-named tensors, tokenizer data.

A GGUF file is: magic "GGUF", a version, a metadata table of typed key/value pairs (the model's
hyperparameters under `<architecture>.*`, the tokenizer under `tokenizer.*`), a table of tensor
descriptions (name, dims fastest-moving first, ggml type, offset), padding to the alignment, and the
tensor data. The header is parsed here with bounds checks on every read, so a truncated or foreign file
fails with a ValueError that names it; the `gguf` package is used only to dequantize block-quantized
tensors (Q4_0, Q4_1, Q8_0, K-quants, ...).

Semantics follow transformers' GGUF loader: the same metadata -> config mapping, tensor names, the
reverse of llama.cpp's rotary row permutation of q/k. The tokenizer is built from `tokenizer_data` by
fastx.processing.gguf_tokenizer. Only the Llama architecture is supported.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORTED_ARCHITECTURES = ("llama",)
GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types: id -> (struct format, size); 8 = string and 9 = array are handled apart.
_SCALARS = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9

# llama.cpp tensor names -> transformers' LlamaForCausalLM names ({} = layer index).
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Tensors llama.cpp writes that transformers' Llama has no place for (Llama 3.1's rope factors).
_IGNORED_TENSORS = ("rope_freqs.weight",)


def _gguf_package():
    try:
        import gguf
    except ImportError:
        raise ImportError("reading quantized GGUF tensors needs the `gguf` package: pip install gguf") from None
    return gguf


# -- Header parsing --
class _Cursor:
    """Bounds-checked little-endian reads from the mapped file."""

    def __init__(self, buf, size: int, path: Path):
        self.buf, self.size, self.path, self.pos = buf, size, path, 0

    def need(self, nbytes: int, what: str) -> None:
        if nbytes < 0 or self.pos + nbytes > self.size:
            raise ValueError(
                f"{self.path}: truncated GGUF file: {what} needs {nbytes} bytes at offset {self.pos}, "
                f"the file has {self.size}"
            )

    def scalar(self, type_id: int, what: str):
        fmt, nbytes = _SCALARS[type_id]
        self.need(nbytes, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += nbytes
        return value

    def string(self, what: str) -> str:
        length = self.scalar(10, what)
        self.need(length, what)
        raw = self.buf[self.pos : self.pos + length]
        self.pos += length
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, type_id: int, what: str):
        if type_id in _SCALARS:
            return self.scalar(type_id, what)
        if type_id == _STRING:
            return self.string(what)
        if type_id == _ARRAY:
            item_type, count = self.scalar(4, what), self.scalar(10, what)
            if item_type in _NUMPY:  # numeric arrays in one read
                nbytes = count * np.dtype(_NUMPY[item_type]).itemsize
                self.need(nbytes, what)
                values = np.frombuffer(self.buf, dtype=_NUMPY[item_type], count=count, offset=self.pos).tolist()
                self.pos += nbytes
                return values
            if count > self.size - self.pos:  # every element takes at least one byte
                self.need(count, what)
            return [self.value(item_type, what) for _ in range(count)]
        raise ValueError(f"{self.path}: {what} has unknown GGUF value type {type_id}")


class GGUFCheckpoint:
    """One parsed GGUF file: `.config` (config.json-like dict), `.tensors()`, `.tokenizer_data`, `.metadata`."""

    def __init__(self, path: Path, metadata: dict[str, Any], tensor_infos: list[tuple], mapped, data_start: int):
        self.path = path
        self.metadata = metadata
        # (name, ggml type id, torch shape (slowest first), byte offset in the file, byte size)
        self.tensor_infos = tensor_infos
        self._mapped = mapped
        self._data_start = data_start
        self.architecture = metadata["general.architecture"]
        self.config = _llama_config(self)
        self.tokenizer_data = {
            key.removeprefix("tokenizer.").removeprefix("ggml."): value
            for key, value in metadata.items()
            if key.startswith("tokenizer.")
        }

    @property
    def tensor_names(self) -> list[str]:
        return [info[0] for info in self.tensor_infos]

    def tensors(self, dtype: torch.dtype = torch.float32, exclude=()) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (transformers name, tensor of `dtype`) one at a time, dequantized, q/k rows un-permuted;
        tensors named in `exclude` (GGUF names: those a loader kept as blocks) are skipped."""
        for name, type_id, shape, offset, nbytes in self.tensor_infos:
            if name in _IGNORED_TENSORS or name in exclude:
                continue
            target = transformers_name(name)
            if target is None:
                raise ValueError(
                    f"{self.path}: tensor {name!r} has no counterpart in a Llama model "
                    "(an architecture variant fastx does not support)"
                )
            yield target, self._unpermuted(name, self._dequantize(name, type_id, shape, offset, nbytes)).to(dtype)

    def _unpermuted(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """q/k rows back in transformers' order (whole rows move: valid for raw block rows too)."""
        if ".attn_q." not in name and ".attn_k." not in name:
            return tensor
        heads = self.config["num_attention_heads" if ".attn_q." in name else "num_key_value_heads"]
        return _unpermute_rotary_rows(tensor, heads, self.path, name)

    def raw_rows(self, name: str) -> torch.Tensor:
        """Tensor `name`'s stored bytes as (rows, bytes per row) uint8: a read-only view of the mapped file,
        except for q/k, whose whole block rows are un-permuted as in tensors() (a copy)."""
        _, _, shape, offset, nbytes = next(info for info in self.tensor_infos if info[0] == name)
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        with warnings.catch_warnings():  # the map is read-only: fastx never writes through these views
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.frombuffer(self._mapped, dtype=torch.uint8, count=nbytes, offset=offset).view(rows, -1)
        return self._unpermuted(name, raw)

    def release_pages(self, names) -> None:
        """Drop the mapped pages of tensors `names` from this process (after copying them: the bytes are
        then held once); the OS page cache keeps them, and a later read faults them back in."""
        page = mmap.PAGESIZE
        for name, _, _, offset, nbytes in self.tensor_infos:
            start, stop = -(-offset // page) * page, (offset + nbytes) // page * page  # whole pages inside
            if name in names and stop > start and hasattr(self._mapped, "madvise"):
                self._mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def _dequantize(self, name: str, type_id: int, shape: tuple[int, ...], offset: int, nbytes: int) -> torch.Tensor:
        raw = np.frombuffer(self._mapped, dtype=np.uint8, count=nbytes, offset=offset)
        if type_id == 0:  # F32
            array = raw.view("<f4")
        elif type_id == 1:  # F16
            array = raw.view("<f2").astype(np.float32)
        else:
            gguf = _gguf_package()
            qtype = gguf.GGMLQuantizationType(type_id)
            rows = raw.reshape(*shape[:-1], -1) if len(shape) > 1 else raw
            try:
                array = gguf.quants.dequantize(rows, qtype)
            except (NotImplementedError, ValueError, TypeError) as exc:
                raise ValueError(f"{self.path}: tensor {name!r}: cannot dequantize {qtype.name} ({exc})") from None
        array = array.reshape(shape)
        return torch.from_numpy(array.copy() if not array.flags.writeable else array)


def transformers_name(gguf_name: str) -> str | None:
    """llama.cpp's tensor name -> transformers' Llama name (None when it has none)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        return None
    if stem in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[stem]}.{suffix}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match[2] in _LAYER_NAMES:
        return f"model.layers.{match[1]}.{_LAYER_NAMES[match[2]]}.{suffix}"
    return None


def _unpermute_rotary_rows(tensor: torch.Tensor, heads: int, path: Path, name: str) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation: its converter interleaves each head's two rotary halves.

    Rows of a head are stored as (D/2, 2) pairs; transformers' rotate-half layout wants (2, D/2).
    """
    rows = tensor.shape[0]
    if rows % (2 * heads):
        raise ValueError(f"{path}: tensor {name!r} has {rows} rows, not a multiple of 2 x {heads} heads")
    return tensor.reshape(heads, rows // heads // 2, 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)


def read_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Parse and validate a GGUF file's header (no tensor data is read)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    except OSError as exc:
        raise OSError(f"{path}: cannot read GGUF file ({exc.strerror or exc})") from None
    if size < 24 or mapped[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    cursor = _Cursor(mapped, size, path)
    cursor.pos = 4
    version = cursor.scalar(4, "the version")
    if version not in GGUF_VERSIONS:
        raise ValueError(f"{path}: GGUF version {version} is not supported (supported: {GGUF_VERSIONS})")
    tensor_count, kv_count = cursor.scalar(10, "the tensor count"), cursor.scalar(10, "the metadata count")
    if 24 * tensor_count + 12 * kv_count > size:  # the least each entry takes in the header
        raise ValueError(
            f"{path}: truncated GGUF file or corrupt header: {tensor_count} tensors and {kv_count} "
            f"metadata entries cannot fit in {size} bytes"
        )

    metadata: dict[str, Any] = {}
    for index in range(kv_count):
        key = cursor.string(f"metadata key #{index}")
        metadata[key] = cursor.value(cursor.scalar(4, f"metadata {key!r}"), f"metadata {key!r}")
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        raise ValueError(f"{path}: GGUF metadata lacks 'general.architecture'")
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{path}: GGUF architecture {architecture!r} is not supported by fastx "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    raw_infos = []
    for index in range(tensor_count):
        name = cursor.string(f"tensor #{index} name")
        ndim = cursor.scalar(4, f"tensor {name!r}")
        if not 1 <= ndim <= 4:
            raise ValueError(f"{path}: tensor {name!r} has {ndim} dimensions (expected 1 to 4)")
        dims = [cursor.scalar(10, f"tensor {name!r}") for _ in range(ndim)]
        type_id, offset = cursor.scalar(4, f"tensor {name!r}"), cursor.scalar(10, f"tensor {name!r}")
        raw_infos.append((name, dims, type_id, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"{path}: general.alignment must be a power of two, got {alignment!r}")
    data_start = -(-cursor.pos // alignment) * alignment

    gguf = _gguf_package()
    known = {int(t): t.name for t in gguf.GGMLQuantizationType}
    tensor_infos = []
    for name, dims, type_id, offset in raw_infos:
        if type_id not in known or gguf.GGMLQuantizationType(type_id) not in gguf.GGML_QUANT_SIZES:
            raise ValueError(f"{path}: tensor {name!r} has unknown quantization type {type_id}")
        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        if any(d <= 0 for d in dims) or dims[0] % block:
            raise ValueError(
                f"{path}: tensor {name!r} has dims {dims}, invalid for {known[type_id]} (blocks of {block})"
            )
        nbytes = int(np.prod(dims, dtype=np.float64)) // block * block_bytes
        start = data_start + offset
        if start + nbytes > size:
            raise ValueError(
                f"{path}: truncated GGUF file: tensor {name!r} needs bytes {start}..{start + nbytes}, "
                f"the file has {size}"
            )
        tensor_infos.append((name, type_id, tuple(reversed(dims)), start, nbytes))
    return GGUFCheckpoint(path, metadata, tensor_infos, mapped, data_start)


# -- Config (transformers' GGUF_CONFIG_MAPPING for llama) --
_LLAMA_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.dimension_count": "head_dim",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_REQUIRED = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count")
_TOKEN_IDS = {
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "unknown_token_id": "unk_token_id",
    "padding_token_id": "pad_token_id",
}


def _llama_config(checkpoint: GGUFCheckpoint) -> dict[str, Any]:
    meta, arch, path = checkpoint.metadata, checkpoint.architecture, checkpoint.path
    missing = [f"{arch}.{key}" for key in _REQUIRED if f"{arch}.{key}" not in meta]
    if missing:
        raise ValueError(f"{path}: GGUF metadata lacks {', '.join(missing)}")
    if meta.get(f"{arch}.expert_count"):
        raise ValueError(f"{path}: mixture-of-experts Llama GGUFs ({arch}.expert_count) are not supported by fastx")
    # transformers' rule: llama.cpp files a Mistral model under "llama" with general.name "mistral".
    model_type = "mistral" if meta.get("general.name") == "mistral" else "llama"
    config: dict[str, Any] = {"model_type": model_type, "architectures": [f"{model_type.capitalize()}ForCausalLM"]}
    for key, field in _LLAMA_KEYS.items():
        if f"{arch}.{key}" in meta:
            config[field] = meta[f"{arch}.{key}"]
    for key, field in _TOKEN_IDS.items():
        if f"tokenizer.ggml.{key}" in meta:
            config[field] = meta[f"tokenizer.ggml.{key}"]
    for field, value in config.items():
        expected = (int, float) if field in ("rms_norm_eps", "rope_theta") else (int, str, list)
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"{path}: GGUF metadata for {field} has type {type(value).__name__}: {value!r:.80}")
    if "vocab_size" not in config and isinstance(meta.get("tokenizer.ggml.tokens"), list):
        config["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    config["tie_word_embeddings"] = "output.weight" not in checkpoint.tensor_names
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling == "linear" and isinstance(meta.get(f"{arch}.rope.scaling.factor"), (int, float)):
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(meta[f"{arch}.rope.scaling.factor"])}
    elif scaling not in (None, "none", "linear"):
        raise ValueError(f"{path}: GGUF rope scaling {scaling!r} is not supported by fastx (supported: none, linear)")
    if isinstance(meta.get("general.name"), str):
        config["_name_or_path"] = meta["general.name"]
    return config


# -- Locating the file: `from_pretrained(path.gguf)` or `from_pretrained(folder_or_repo, gguf_file=name)` --
def resolve_gguf_file(
    name_or_path: str | os.PathLike,
    gguf_file: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path | None:
    """The local GGUF file these arguments name, downloading it from the Hub if needed; None for a non-GGUF load."""
    path = Path(name_or_path).expanduser()
    if gguf_file is None:  # a path to the file itself (a missing one fails in read_gguf with OSError)
        return path if path.suffix.lower() == ".gguf" and not path.is_dir() else None
    if Path(gguf_file).is_absolute() and Path(gguf_file).is_file():
        return Path(gguf_file)
    if path.is_dir():
        local = path / gguf_file
        if not local.is_file():
            raise OSError(f"{name_or_path}: no GGUF file {str(gguf_file)!r} in this folder")
        return local
    from huggingface_hub import hf_hub_download

    from fastx.checkpoints.hub import hub_call

    name = str(name_or_path)
    return Path(
        hub_call(
            name,
            revision,
            lambda: hf_hub_download(
                name,
                str(gguf_file),
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            ),
            filename=str(gguf_file),
        )
    )
