"""A Llama safetensors checkpoint folder -> a GGUF file that fastx, transformers and llama.cpp load.

The metadata, tensor names and q/k row order are those llama.cpp's convert_hf_to_gguf.py writes for a
Llama (names and the rotary permutation are the inverses of fastx.checkpoints.gguf's reader tables);
the tensor types follow fastx.checkpoints.gguf_types. Tensors are read, converted and written one at
a time (only one tensor is ever held in float32), into a temporary file beside the output that is
renamed over it at the end: a failure leaves no partial file.

Tokenizers: byte-level BPE (tokenizer.ggml.model "gpt2", as SmolLM2, Llama 3, GPT-2). SentencePiece
and WordPiece vocabularies are refused with a ValueError.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from fastx.checkpoints.gguf import _GLOBAL_NAMES, _LAYER_NAMES
from fastx.checkpoints.gguf_types import TYPES, parse_type, tensor_type
from fastx.checkpoints.hub import read_json
from fastx.checkpoints.kquants import QUANTIZERS
from fastx.checkpoints.safetensors import checkpoint_files, iter_safetensors, read_safetensors_header

_LLAMA_ARCHITECTURES = ("LlamaForCausalLM",)
# transformers' Llama names -> llama.cpp's (the reader's tables, inverted).
_TO_GGUF_GLOBAL = {hf: gg for gg, hf in _GLOBAL_NAMES.items()}
_TO_GGUF_LAYER = {hf: gg for gg, hf in _LAYER_NAMES.items()}
# tokenizer.json pre-tokenizer -> llama.cpp's tokenizer.ggml.pre (the regex llama.cpp splits text with).
_LLAMA3_SPLIT_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED, _TOKEN_UNUSED = 1, 3, 4, 5


@dataclass
class TensorReport:
    name: str
    shape: tuple[int, ...]
    type: str
    fell_back_from: str | None
    nbytes: int


@dataclass
class QuantizeReport:
    """What quantize() wrote: per-tensor types, the fallbacks, and the sizes."""

    output: Path
    type: str
    tensors: list[TensorReport] = field(default_factory=list)
    source_bytes: int = 0
    output_bytes: int = 0
    weights: int = 0

    @property
    def fallbacks(self) -> list[TensorReport]:
        return [t for t in self.tensors if t.fell_back_from]

    @property
    def bits_per_weight(self) -> float:
        return 8 * sum(t.nbytes for t in self.tensors) / max(self.weights, 1)


def gguf_tensor_name(hf_name: str) -> str | None:
    """transformers' Llama tensor name -> llama.cpp's (None when it has none)."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem in _TO_GGUF_GLOBAL:
        return f"{_TO_GGUF_GLOBAL[stem]}.{suffix}"
    parts = stem.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in _TO_GGUF_LAYER:
        return f"blk.{parts[2]}.{_TO_GGUF_LAYER[parts[3]]}.{suffix}"
    return None


def permute_rotary_rows(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k permutation: each head's two rotary halves interleaved (rows (2, D/2) -> (D/2, 2));
    the inverse of fastx.checkpoints.gguf._unpermute_rotary_rows."""
    rows = tensor.shape[0]
    return tensor.reshape(heads, 2, rows // heads // 2, *tensor.shape[1:]).transpose(1, 2).reshape(tensor.shape)


def _config(folder: Path) -> dict:
    config = read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llama" or not set(architectures) <= set(_LLAMA_ARCHITECTURES):
        raise ValueError(
            f"MODEL {folder}: expected a Llama checkpoint (model_type 'llama', architectures "
            f"{list(_LLAMA_ARCHITECTURES)}), got model_type {config.get('model_type')!r}, architectures {architectures}"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int) or isinstance(config.get(key), bool):
            raise ValueError(f"{folder / 'config.json'}: expected an integer {key}, got {config.get(key)!r}")
    return config


def _rope(config: dict, path: Path) -> tuple[float, dict | None]:
    """(rope_theta, rope scaling or None) from transformers 4's or 5's config layout."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "linear":
            raise ValueError(
                f"{path}: rope scaling {kind!r} is not supported by fastx quantize (supported: none, linear)"
            )
    return float(theta), scaling


def _write_metadata(writer: gguf.GGUFWriter, folder: Path, config: dict, kind: str) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    theta, scaling = _rope(config, folder / "config.json")
    name = config.get("_name_or_path") or config.get("_model_name_or_path") or folder.name
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(Path(str(name)).name or folder.name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type(TYPES[kind][1])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if scaling is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    _write_tokenizer(writer, folder, config["vocab_size"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _pre_tokenizer_name(pre: dict | None, path: Path) -> str:
    """llama.cpp's tokenizer.ggml.pre for a tokenizer.json pre-tokenizer (by its structure)."""
    steps = (pre.get("pretokenizers") or []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    types = [step.get("type") for step in steps]
    if types == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if types == ["Split", "ByteLevel"] and str(steps[0].get("pattern", {}).get("Regex", "")).startswith(
        _LLAMA3_SPLIT_START
    ):
        return "llama-bpe"
    raise ValueError(
        f"{path}: the pre-tokenizer {types} has no llama.cpp counterpart fastx knows "
        "(supported: GPT-2's byte-level regex, SmolLM's digits + byte level, Llama 3's split regex)"
    )


def _write_tokenizer(writer: gguf.GGUFWriter | None, folder: Path, vocab_size: int) -> None:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise OSError(f"MODEL {folder}: expected a tokenizer.json (byte-level BPE), found none")
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "SentencePiece-style BPE (byte fallback)" if model.get("byte_fallback") else model.get("type")
        raise ValueError(
            f"{path}: tokenizer model {kind!r} is not supported by fastx quantize (supported: byte-level BPE, "
            "tokenizer.ggml.model 'gpt2')"
        )
    pre = _pre_tokenizer_name(data.get("pre_tokenizer"), path)
    vocab = dict(model.get("vocab") or {})
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    vocab.update({content: token["id"] for content, token in added.items()})
    by_id = {index: token for token, index in vocab.items()}
    if by_id and max(by_id) >= vocab_size:
        raise ValueError(f"{path}: token id {max(by_id)} is outside config.json's vocab_size {vocab_size}")
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(_TOKEN_UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(_TOKEN_CONTROL if added[token].get("special") else _TOKEN_USER_DEFINED)
        else:
            tokens.append(token)
            types.append(_TOKEN_NORMAL)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise ValueError(f"{path}: a byte-level BPE tokenizer needs merges, found none")
    if writer is None:
        return
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special.add_to_gguf(writer, quiet=True)
    if "bos" not in special.add_special_token:  # not in tokenizer_config.json: what the post-processor does
        writer.add_add_bos_token(_post_processor_adds_bos(data.get("post_processor"), special.special_token_ids))


def _post_processor_adds_bos(processor: dict | None, ids: dict) -> bool:
    """Whether tokenizer.json's TemplateProcessing puts the BOS token before the text."""
    if not processor or processor.get("type") != "TemplateProcessing" or "bos" not in ids:
        return False
    first = (processor.get("single") or [{}])[0]
    token = first.get("SpecialToken", {}).get("id")
    return token is not None and (processor.get("special_tokens", {}).get(token) or {}).get("ids") == [ids["bos"]]


def _plan(folder: Path, config: dict, kind: str):
    """[(file, hf name, gguf name, torch shape, ggml type, fell back from)] in file order; skipped names."""
    tied = bool(config.get("tie_word_embeddings", False))
    layers = config["num_hidden_layers"]
    headers = [(file, read_safetensors_header(file)) for file in checkpoint_files(folder)]
    names = {name for _, header in headers for name in header}
    # Tied weights saved once under the output's name (safetensors' save_model keeps one of the pair).
    embed_from_head = tied and "lm_head.weight" in names and "model.embed_tokens.weight" not in names
    plan, seen = [], set()
    for file, header in headers:
        for hf_name, info in header.items():
            if hf_name == "lm_head.weight" and tied and not embed_from_head:
                continue  # tied: llama.cpp writes no output.weight
            name = "token_embd.weight" if hf_name == "lm_head.weight" and tied else gguf_tensor_name(hf_name)
            if name is None:
                raise ValueError(f"{file}: tensor {hf_name!r} has no counterpart in llama.cpp's Llama")
            if info["dtype"] not in ("F32", "F16", "BF16"):
                raise ValueError(f"{file}: tensor {hf_name!r} has dtype {info['dtype']}, expected F32, F16 or BF16")
            shape = tuple(info["shape"])
            ggml_type, fell_back = tensor_type(kind, name, shape, layers, tied)
            plan.append((file, hf_name, name, shape, ggml_type, fell_back))
            seen.add(name)
    if "token_embd.weight" not in seen:
        raise ValueError(f"MODEL {folder}: no model.embed_tokens.weight in the checkpoint")
    return plan


def encode_tensor(array: np.ndarray, ggml_type: gguf.GGMLQuantizationType) -> np.ndarray:
    """A float32 tensor (rows, cols) -> its GGUF bytes: float arrays for F32/F16, uint8 blocks otherwise."""
    T = gguf.GGMLQuantizationType
    if ggml_type == T.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if ggml_type == T.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    if ggml_type.name in QUANTIZERS:
        blocks = QUANTIZERS[ggml_type.name](array)
        return blocks.reshape(*array.shape[:-1], -1)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), ggml_type)


def _nbytes(shape: tuple[int, ...], ggml_type: gguf.GGMLQuantizationType) -> int:
    block, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    return int(np.prod(shape, dtype=np.int64)) // block * block_bytes


@dataclass
class QuantizeJob:
    """A checked request: the source folder, the output path, the --type and the tensor plan."""

    folder: Path
    output: Path
    type: str
    config: dict
    plan: list


def prepare(model: str | os.PathLike, output: str | os.PathLike, type: str, *, force: bool = False) -> QuantizeJob:
    """Check the arguments and the checkpoint (config, tokenizer kind, tensor names) before writing anything."""
    kind = parse_type(type)
    folder, out = Path(model), Path(output)
    if not folder.is_dir():
        raise OSError(f"MODEL: expected a checkpoint folder, got {str(model)!r} (no such folder)")
    if out.is_dir():
        raise OSError(f"OUT: expected a .gguf file path, got {str(output)!r}, which is a folder")
    if out.exists() and not force:
        raise OSError(f"OUT: {str(output)!r} already exists (pass --force / force=True to overwrite it)")
    if not out.parent.is_dir():
        raise OSError(f"OUT: expected a path in an existing folder, got {str(output)!r} (no folder {str(out.parent)})")
    config = _config(folder)
    _write_tokenizer(None, folder, config["vocab_size"])  # refuses an unsupported tokenizer now
    return QuantizeJob(folder, out, kind, config, _plan(folder, config, kind))


def quantize(
    model: str | os.PathLike,
    output: str | os.PathLike,
    type: str = "Q8_0",
    *,
    force: bool = False,
    progress: Callable[[int, int, TensorReport], None] | None = None,
) -> QuantizeReport:
    """Write Llama checkpoint folder `model` as GGUF file `output` with tensor types `type` (see gguf_types).

    `progress(index, count, tensor)` is called after each tensor is written. Returns a QuantizeReport.
    """
    return write(prepare(model, output, type, force=force), progress)


def write(job: QuantizeJob, progress: Callable[[int, int, TensorReport], None] | None = None) -> QuantizeReport:
    """Write a prepared job: a temporary file beside the output, renamed over it when complete."""
    out = job.output
    report = QuantizeReport(output=out, type=job.type)
    report.source_bytes = sum(f.stat().st_size for f in checkpoint_files(job.folder))
    fd, temp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    os.close(fd)
    temp = Path(temp_name)
    try:
        writer = gguf.GGUFWriter(temp, "llama")
        _write_metadata(writer, job.folder, job.config, job.type)
        for _, _, name, shape, ggml_type, _ in job.plan:
            stored = np.float16 if ggml_type == gguf.GGMLQuantizationType.F16 else np.float32
            raw = None if ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else ggml_type
            writer.add_tensor_info(name, shape, np.dtype(stored), _nbytes(shape, ggml_type), raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _write_tensors(writer, job.plan, job.config, report, progress)
        writer.close()
        report.output_bytes = temp.stat().st_size
        os.replace(temp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return report


def _write_tensors(writer, plan, config, report: QuantizeReport, progress) -> None:
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    wanted = {(file, hf_name): entry for entry in plan for file, hf_name in [entry[:2]]}
    files = list(dict.fromkeys(entry[0] for entry in plan))
    index = 0
    for file in files:
        for hf_name, tensor in iter_safetensors(file):
            entry = wanted.get((file, hf_name))
            if entry is None:
                continue
            _, _, name, shape, ggml_type, fell_back = entry
            if name.endswith(("attn_q.weight", "attn_q.bias")):
                tensor = permute_rotary_rows(tensor, heads)
            elif name.endswith(("attn_k.weight", "attn_k.bias")):
                tensor = permute_rotary_rows(tensor, kv_heads)
            data = encode_tensor(tensor.to(torch.float32).numpy(), ggml_type)
            writer.write_tensor_data(data)
            entry_report = TensorReport(name, shape, ggml_type.name, fell_back.name if fell_back else None, data.nbytes)
            report.tensors.append(entry_report)
            report.weights += int(np.prod(shape, dtype=np.int64))
            index += 1
            if progress is not None:
                progress(index, len(plan), entry_report)
    if index != len(plan):
        raise ValueError(f"expected {len(plan)} tensors from the checkpoint, read {index}")


def quantized_summary(report: QuantizeReport) -> dict:
    """A JSON-ready summary of a QuantizeReport."""
    return {
        "output": str(report.output),
        "type": report.type,
        "tensors": len(report.tensors),
        "fallbacks": {t.name: f"{t.fell_back_from}->{t.type}" for t in report.fallbacks},
        "source_bytes": report.source_bytes,
        "output_bytes": report.output_bytes,
        "bits_per_weight": round(report.bits_per_weight, 4),
    }
