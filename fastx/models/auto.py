"""AutoConfig / AutoModel* : pick the fastx class from config.json's model_type, as transformers does.

The table is the list of architectures fastx has; a checkpoint of any other architecture is
refused with that list (there is no remote code). Family modules are imported on first use.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from fastx.checkpoints.gguf import GGUFCheckpoint, read_gguf, resolve_gguf_file
from fastx.checkpoints.hub import read_json, resolve_checkpoint
from fastx.models.config import config_from_dict

# model_type -> (module, {auto class name: model class name})
MODEL_TYPES: dict[str, tuple[str, dict[str, str]]] = {
    "bert": (
        "fastx.models.bert",
        {
            "AutoModel": "BertModel",
            "AutoModelForMaskedLM": "BertForMaskedLM",
            "AutoModelForSequenceClassification": "BertForSequenceClassification",
            "AutoModelForTokenClassification": "BertForTokenClassification",
            "AutoModelForQuestionAnswering": "BertForQuestionAnswering",
        },
    ),
    "roberta": (
        "fastx.models.roberta",
        {
            "AutoModel": "RobertaModel",
            "AutoModelForMaskedLM": "RobertaForMaskedLM",
            "AutoModelForSequenceClassification": "RobertaForSequenceClassification",
            "AutoModelForTokenClassification": "RobertaForTokenClassification",
            "AutoModelForQuestionAnswering": "RobertaForQuestionAnswering",
        },
    ),
    "distilbert": (
        "fastx.models.distilbert",
        {
            "AutoModel": "DistilBertModel",
            "AutoModelForMaskedLM": "DistilBertForMaskedLM",
            "AutoModelForSequenceClassification": "DistilBertForSequenceClassification",
            "AutoModelForTokenClassification": "DistilBertForTokenClassification",
            "AutoModelForQuestionAnswering": "DistilBertForQuestionAnswering",
        },
    ),
    "gpt2": ("fastx.models.gpt2", {"AutoModel": "GPT2Model", "AutoModelForCausalLM": "GPT2LMHeadModel"}),
    "llama": ("fastx.models.llama", {"AutoModel": "LlamaModel", "AutoModelForCausalLM": "LlamaForCausalLM"}),
    "mistral": ("fastx.models.llama", {"AutoModel": "LlamaModel", "AutoModelForCausalLM": "LlamaForCausalLM"}),
    "qwen2": ("fastx.models.llama", {"AutoModel": "LlamaModel", "AutoModelForCausalLM": "LlamaForCausalLM"}),
    "vit": (
        "fastx.models.vit",
        {"AutoModel": "ViTModel", "AutoModelForImageClassification": "ViTForImageClassification"},
    ),
    "convnext": (
        "fastx.models.convnext",
        {"AutoModel": "ConvNextModel", "AutoModelForImageClassification": "ConvNextForImageClassification"},
    ),
}


def _model_type(folder, name_or_path) -> tuple[str, dict[str, Any]]:
    path = folder / "config.json"
    data = read_json(path)
    model_type = data.get("model_type")
    if not isinstance(model_type, str):
        raise ValueError(f"{path}: missing required field 'model_type'")
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{name_or_path}: architecture {model_type!r} is not supported by fastx "
            f"(supported: {', '.join(sorted(MODEL_TYPES))}); fastx runs no remote code"
        )
    return model_type, data


def _class_for(auto_name: str, model_type: str, name_or_path):
    module_name, classes = MODEL_TYPES[model_type]
    if auto_name not in classes:
        tasks = ", ".join(sorted(classes))
        raise ValueError(f"{name_or_path}: {auto_name} is not available for {model_type!r} models (available: {tasks})")
    return getattr(importlib.import_module(module_name), classes[auto_name])


class _AutoModelBase:
    _auto_name = ""

    def __init__(self):
        raise TypeError(f"{type(self).__name__} is a factory: use {type(self).__name__}.from_pretrained(...)")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        revision=None,
        cache_dir=None,
        local_files_only=False,
        token=None,
        gguf_file=None,
        **kwargs,
    ):
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        gguf_path = resolve_gguf_file(name_or_path, gguf_file, **hub)
        if gguf_path is not None:  # GGUF: the model type is the file's general.architecture
            model = cls.from_gguf(read_gguf(gguf_path), **kwargs)
        else:
            folder = resolve_checkpoint(name_or_path, **hub)
            model_type, _ = _model_type(folder, name_or_path)
            model = _class_for(cls._auto_name, model_type, name_or_path).from_pretrained(folder, **kwargs)
        model.name_or_path = str(name_or_path)
        return model

    @classmethod
    def from_gguf(cls, checkpoint: GGUFCheckpoint, **kwargs):
        """The model of a GGUF file already parsed by read_gguf (dtype=, device= as from_pretrained)."""
        model_class = _class_for(cls._auto_name, checkpoint.config["model_type"], checkpoint.path)
        return model_class.from_gguf(checkpoint, **kwargs)


class AutoConfig:
    def __init__(self):
        raise TypeError("AutoConfig is a factory: use AutoConfig.from_pretrained(...)")

    @classmethod
    def from_pretrained(
        cls, name_or_path, revision=None, cache_dir=None, local_files_only=False, token=None, gguf_file=None
    ):
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        gguf_path = resolve_gguf_file(name_or_path, gguf_file, **hub)
        if gguf_path is not None:
            data = read_gguf(gguf_path).config
            model_type = data["model_type"]
            model_class = _class_for("AutoModel", model_type, name_or_path)
            return config_from_dict(model_class.config_class, data, str(gguf_path))
        folder = resolve_checkpoint(name_or_path, **hub)
        model_type, data = _model_type(folder, name_or_path)
        model_class = _class_for("AutoModel", model_type, name_or_path)
        return config_from_dict(model_class.config_class, data, str(folder / "config.json"))


def _auto(name: str) -> type:
    return type(name, (_AutoModelBase,), {"_auto_name": name, "__doc__": f"transformers' {name}, served by fastx."})


AutoModel = _auto("AutoModel")
AutoModelForCausalLM = _auto("AutoModelForCausalLM")
AutoModelForMaskedLM = _auto("AutoModelForMaskedLM")
AutoModelForSequenceClassification = _auto("AutoModelForSequenceClassification")
AutoModelForTokenClassification = _auto("AutoModelForTokenClassification")
AutoModelForImageClassification = _auto("AutoModelForImageClassification")
AutoModelForQuestionAnswering = _auto("AutoModelForQuestionAnswering")
