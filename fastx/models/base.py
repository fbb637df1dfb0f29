"""What every fastx model shares: `from_pretrained`, checkpoint-name mapping, weight loading.

A model is built on the meta device (no memory), then each checkpoint tensor is read once,
converted to the requested dtype, renamed, reshaped if the layer packs it (fused QKV,
gate-up, GPT-2's transposed Conv1D), checked against the parameter's shape and placed on the
target device. Nothing is held twice beyond the pieces of one packed parameter.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fastx.checkpoints.gguf import GGUFCheckpoint, read_gguf, resolve_gguf_file
from fastx.checkpoints.hub import read_json, resolve_checkpoint
from fastx.checkpoints.safetensors import (
    SAFETENSORS_DTYPES,
    checkpoint_files,
    iter_safetensors,
    read_safetensors_header,
)
from fastx.distributed.layers import current_shard
from fastx.models.config import config_from_dict
from fastx.models.dtypes import resolve_dtype
from fastx.models.gguf_blocks import keep_gguf_blocks, keeps_blocks_by_default
from fastx.models.loading_progress import tracked
from fastx.models.placement import resolve_device
from fastx.models.quantization import apply_quantization, check_quantization, gguf_dtype


@contextlib.contextmanager
def _skip_weight_init():
    """Make torch.nn.init a no-op while a model is built on the meta device.

    Every weight is overwritten by the checkpoint, so initialising it is wasted work; worse, the
    first nn.init call on a meta tensor imports torch's decomposition tables (measured: ~3 s of a
    3.6 s all-MiniLM-L6-v2 load in a fresh process). transformers skips init the same way
    (no_init_weights). The functions are restored on exit.
    """
    names = (
        "normal_",
        "uniform_",
        "trunc_normal_",
        "constant_",
        "zeros_",
        "ones_",
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
    )
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


class PreTrainedModel(nn.Module):
    """Base of every fastx model class; subclasses set the class attributes below."""

    config_class: ClassVar[type]
    # Prefix of the base model inside task models ("bert", "transformer", "model", ...):
    # checkpoint names are accepted with or without it.
    base_model_prefix: ClassVar[str] = ""
    # Checkpoint entries that are not weights (buffers old transformers versions saved).
    ignored_checkpoint_keys: ClassVar[tuple[str, ...]] = (r"(^|\.)position_ids$", r"\.attn\.(masked_)?bias$")
    # Submodules that may be absent from a checkpoint (e.g. BERT's pooler); they are dropped.
    optional_modules: ClassVar[tuple[str, ...]] = ()
    # Fused parameters: {"qkv_proj": ("q_proj", "k_proj", "v_proj")}: checkpoint pieces named
    # by the right-hand names are concatenated along dim 0 into the left-hand parameter.
    packed_modules: ClassVar[dict[str, tuple[str, ...]]] = {}

    config: Any

    def __init__(self):
        super().__init__()
        # Tensor parallelism (fastx.distributed): which rank's slices this model holds; rank 0 of 1 otherwise.
        self.shard = current_shard()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        torch_dtype: torch.dtype | str | None = None,
        gguf_file: str | os.PathLike | None = None,
        device_map: str | int | dict | torch.device | None = None,
        quantization: str | None = None,
    ):
        """Load a checkpoint (Hub repo id, local folder or .gguf file) ready for inference (eval mode, no grads).

        `device_map` takes transformers' single-device forms ("auto", "cuda:1", {"": "cpu"}, ...).
        `quantization="int8"` / `"int4"`: CPU only, the projections through torch's weight-only int8 / int4
        GEMMs (approximate; fastx.models.quantization)."""
        dtype = dtype if dtype is not None else torch_dtype
        device = resolve_device(device, device_map)
        check_quantization(quantization)
        # GGUF (llama.cpp's single file): a path to the .gguf, or a folder / repo id with gguf_file=name.
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        gguf_path = resolve_gguf_file(name_or_path, gguf_file, **hub)
        if gguf_path is not None:
            model = cls.from_gguf(read_gguf(gguf_path), dtype=dtype, device=device, quantization=quantization)
        else:
            folder = resolve_checkpoint(name_or_path, **hub)
            config_path = folder / "config.json"
            data = read_json(config_path)
            config = config_from_dict(cls.config_class, data, str(config_path))
            model = cls._build(config, resolve_dtype(dtype, data, device), device, folder, gguf=None)
            apply_quantization(model, quantization)
        model.name_or_path = str(name_or_path)
        return model

    @classmethod
    def from_gguf(
        cls,
        checkpoint: GGUFCheckpoint,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        device_map: str | int | dict | torch.device | None = None,
        quantization: str | None = None,
    ):
        """Load from a GGUF file already parsed by read_gguf (its metadata is the config)."""
        from fastx.models.auto import MODEL_TYPES

        device = resolve_device(device, device_map)
        data = checkpoint.config
        if MODEL_TYPES[data["model_type"]][0] != cls.__module__:
            raise ValueError(
                f"{checkpoint.path}: a GGUF {data['model_type']} checkpoint cannot load into {cls.__name__}"
            )
        config = config_from_dict(cls.config_class, data, str(checkpoint.path))
        # dtype names the weights' dtype, as in transformers: a float dtype dequantizes every tensor to
        # it; "auto" (the checkpoint's own) keeps block-quantized weights as the file's blocks; None keeps
        # them where that pays (fastx.models.gguf_blocks.keeps_blocks_by_default).
        check_quantization(quantization)
        dtype = gguf_dtype(quantization, dtype)
        shard_size = current_shard().size
        keep_blocks = (dtype == "auto" and shard_size == 1) or (
            dtype is None and keeps_blocks_by_default(checkpoint, torch.device(device), shard_size)
        )
        resolved = resolve_dtype(dtype, data, device)
        model = cls._build(config, resolved, device, checkpoint.path, gguf=checkpoint, keep_blocks=keep_blocks)
        apply_quantization(model, quantization)
        model.name_or_path = str(checkpoint.path)
        return model

    @classmethod
    def _build(cls, config, dtype: torch.dtype, device, folder: Path, gguf: GGUFCheckpoint | None, keep_blocks=False):
        """Build on the meta device (no memory, no init), then read every weight once onto `device`
        (a GGUF's block-quantized weights kept as blocks with `keep_blocks`: fastx.models.gguf_blocks)."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        with torch.device("meta"), _skip_weight_init():
            model = cls(config)
        kept = keep_gguf_blocks(model, gguf, dtype, device) if keep_blocks and gguf is not None else set()
        model.load_checkpoint(folder, dtype, device, gguf=gguf, exclude=kept)
        return model.eval().requires_grad_(False)

    # -- loading --------------------------------------------------------------------------------
    def checkpoint_tensors(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """Hook: rename or reshape one checkpoint tensor (GPT-2 transposes its Conv1D weights)."""
        yield name, tensor

    def init_buffers(self, device: torch.device) -> None:
        """Hook: build non-persistent buffers (rotary caches) after the weights are on `device`."""

    def tie_weights(self) -> None:
        """Hook: share tied parameters (output embeddings = input embeddings)."""

    def _target_name(self, name: str, params: dict[str, nn.Parameter]) -> str | None:
        candidates = [name]
        prefix = self.base_model_prefix
        if prefix:
            candidates += [name.removeprefix(prefix + "."), f"{prefix}.{name}"]
        for candidate in candidates:
            if candidate in params:
                return candidate
        return None

    def _checkpoint_entries(
        self, folder: Path, dtype: torch.dtype, gguf, destinations: dict[str, torch.Tensor], exclude=()
    ) -> Iterator[tuple[Path, str, torch.Tensor]]:
        """(file, name, tensor) of every checkpoint tensor: safetensors files, or one GGUF (fastx.checkpoints.gguf)
        less the GGUF tensors named in `exclude`."""
        if gguf is not None:
            yield from ((gguf.path, name, tensor) for name, tensor in gguf.tensors(dtype, exclude))
            return

        def is_packed_piece(name: str) -> bool:  # read as a copy: it is concatenated right away
            # (a tensor-parallel rank slices the mapped view instead: it never reads the whole piece)
            return self.shard.size == 1 and self._packed_name(name, None)[1] is not None

        for file in checkpoint_files(folder):
            entries = iter_safetensors(file, dtype, is_packed_piece, destinations.get)
            yield from ((file, name, tensor) for name, tensor in entries)

    @staticmethod
    def _checkpoint_size(folder: Path, gguf, exclude=()) -> int:
        """How many tensors _checkpoint_entries yields (for a progress bar)."""
        if gguf is not None:
            return len(gguf.tensor_infos) - len(exclude)
        return sum(len(read_safetensors_header(file)) for file in checkpoint_files(folder))

    def _fused_destinations(
        self, folder: Path, dtype: torch.dtype, params
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """From the headers alone: preallocate each fused parameter and map its pieces' checkpoint
        names to their row slices, so each piece is read straight into place (no per-piece buffer,
        no concatenation: the torch.cat of the pieces was 0.67 s of a 0.95 s SmolLM2 load).

        Returns ({checkpoint name: slice}, {parameter name: fused tensor}). Anything unusual (a
        dtype conversion, a hook that reshapes tensors, missing or misshapen pieces) is left to
        the general path, which converts, concatenates or reports it.
        """
        if (
            not self.packed_modules
            or type(self).checkpoint_tensors is not PreTrainedModel.checkpoint_tensors
            or self.shard.size > 1  # a rank's pieces are slices, cut from the mapped tensors in _local
        ):
            return {}, {}
        found: dict[str, dict[int, tuple[str, list[int], torch.dtype]]] = {}
        for file in checkpoint_files(folder):
            for raw, info in read_safetensors_header(file).items():
                if any(re.search(p, raw) for p in self.ignored_checkpoint_keys):
                    continue
                name, part = self._packed_name(raw, params)
                target = self._target_name(name, params) if part is not None else None
                if target is not None:
                    found.setdefault(target, {})[part] = (raw, info["shape"], SAFETENSORS_DTYPES[info["dtype"]])
        slices, fused = {}, {}
        for target, got in found.items():
            count = len(self._packed_parts(target))
            pieces = [got.get(i) for i in range(count)]
            if None in pieces or any(dt != dtype or not shape for _, shape, dt in pieces):
                continue
            if {tuple(shape[1:]) for _, shape, _ in pieces} != {tuple(params[target].shape[1:])}:
                continue
            if sum(shape[0] for _, shape, _ in pieces) != params[target].shape[0]:
                continue
            fused[target] = torch.empty(params[target].shape, dtype=dtype)
            offset = 0
            for raw, shape, _ in pieces:
                slices[raw] = fused[target][offset : offset + shape[0]]
                offset += shape[0]
        return slices, fused

    def load_checkpoint(self, folder: Path, dtype: torch.dtype, device: torch.device, gguf=None, exclude=()) -> None:
        params = dict(self.named_parameters())
        top_level = {n.split(".")[0] for n in params}
        pieces: dict[str, dict[int, torch.Tensor]] = {}
        loaded: set[str] = set()
        slices, fused = self._fused_destinations(folder, dtype, params) if gguf is None else ({}, {})
        entries = self._checkpoint_entries(folder, dtype, gguf, slices, exclude)
        for file, raw_name, raw_tensor in tracked(entries, lambda: self._checkpoint_size(folder, gguf, exclude)):
            if any(re.search(p, raw_name) for p in self.ignored_checkpoint_keys):
                continue
            for name, tensor in self.checkpoint_tensors(raw_name, raw_tensor):
                name, part = self._packed_name(name, params)
                target = self._target_name(name, params)
                if target is None:
                    stripped = name.removeprefix(self.base_model_prefix + ".") if self.base_model_prefix else name
                    if stripped.split(".")[0] in top_level or name.split(".")[0] in top_level:
                        raise ValueError(
                            f"{file}: unexpected tensor {raw_name!r}: no such parameter in {type(self).__name__}"
                        )
                    continue  # a head this class does not have (e.g. the MLM head under AutoModel)
                if part is not None:
                    pieces.setdefault(target, {})[part] = self._local(target, tensor, part)
                    count = len(self._packed_parts(target))
                    if len(pieces[target]) < count:
                        continue
                    parts = pieces.pop(target)
                    # pieces read into their fused parameter's rows are already in place
                    tensor = (
                        fused.pop(target) if target in fused else torch.cat([parts[i] for i in range(count)], dim=0)
                    )
                else:
                    tensor = self._local(target, tensor, None)
                self._assign(target, tensor, params[target], device, file)
                loaded.add(target)
        for target, got in pieces.items():
            missing = [p for i, p in enumerate(self._packed_parts(target)) if i not in got]
            raise ValueError(f"{folder}: checkpoint lacks {missing} for packed parameter {target!r}")
        self.tie_weights()
        self._drop_absent_optional_modules(loaded)
        missing = [n for n, p in self.named_parameters() if p.is_meta]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"{folder}: checkpoint is missing tensors for {type(self).__name__}: {shown}")
        self.init_buffers(device)

    def _packed_parts(self, target: str) -> tuple[str, ...]:
        module_name = target.split(".")[-2]
        return self.packed_modules[module_name]

    def _packed_name(self, name: str, params) -> tuple[str, int | None]:
        parts = name.split(".")
        if len(parts) >= 2:
            for fused, pieces in self.packed_modules.items():
                if parts[-2] in pieces:
                    return ".".join(parts[:-2] + [fused, parts[-1]]), pieces.index(parts[-2])
        return name, None

    def _local(self, target: str, tensor: torch.Tensor, part: int | None) -> torch.Tensor:
        """This rank's part of a full checkpoint tensor (all of it on one device; see fastx.distributed.layers)."""
        if self.shard.size == 1:
            return tensor
        module_name, _, leaf = target.rpartition(".")
        module = self.get_submodule(module_name) if module_name else self
        shard_tensor = getattr(module, "shard_tensor", None)
        if shard_tensor is not None:
            return shard_tensor(leaf, tensor, part)
        # A replicated parameter gets its own copy too: no view keeps the file's map (with the
        # pages of the other ranks' slices that slicing touched) alive after loading.
        return tensor.clone(memory_format=torch.contiguous_format)

    def _assign(self, target: str, tensor: torch.Tensor, param: nn.Parameter, device, file) -> None:
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(
                f"{file}: tensor for {target!r} has shape {tuple(tensor.shape)}, expected {tuple(param.shape)}"
            )
        module_name, _, leaf = target.rpartition(".")
        module = self.get_submodule(module_name) if module_name else self
        # Floating tensors already carry the requested dtype (converted while read).
        # (contiguous: a hook may yield a transposed view, as GPT-2's Conv1D weights are)
        module._parameters[leaf] = nn.Parameter(tensor.to(device=device).contiguous(), requires_grad=False)

    def _drop_absent_optional_modules(self, loaded: set[str]) -> None:
        """A declared-optional submodule with no tensor in the checkpoint is removed (set to None)."""
        for path, module in list(self.named_modules()):
            if module is None or path.rpartition(".")[2] not in self.optional_modules:
                continue
            names = [f"{path}.{n}" for n, _ in module.named_parameters()]
            if names and not any(n in loaded for n in names):
                owner, _, leaf = path.rpartition(".")
                setattr(self.get_submodule(owner) if owner else self, leaf, None)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class GenerationMixin:
    """transformers' `model.generate(input_ids, ...)` for causal LMs, served by the paged engine.

    The engine sits above the models (kernels <- ops <- models <- engine), so it is imported
    only when generate is called.
    """

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        from fastx.engine.generate import generate

        return generate(self, input_ids, attention_mask, **kwargs)
