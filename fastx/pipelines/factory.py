"""`fastx.pipeline(task, model=None, ...)`: transformers' `pipeline()` front door on fastx models.

Task names and aliases are transformers'; each task names its pipeline class, the Auto class
whose head it needs and its default model. With no `model`, feature-extraction and
text-generation use the models embedded in registry packages (fastx.checkpoints.defaults); the
other tasks use transformers' default checkpoint (at transformers' revision) through the Hub
cache, so a machine where transformers' pipeline already downloaded it runs offline.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch

EMBEDDED = "embedded"  # the default model ships in a registry package


@dataclass(frozen=True)
class Task:
    module: str
    pipeline_class: str
    auto_class: str | None  # None: the pipeline loads its own model (text generation on the engine)
    default: tuple[str, str | None]  # (Hub id, revision) or (EMBEDDED, None)
    needs: str = "tokenizer"  # what preprocessing the task reads: "tokenizer" or "image_processor"


TASKS: dict[str, Task] = {
    "feature-extraction": Task(
        "fastx.pipelines.feature_extraction", "FeatureExtractionPipeline", "AutoModel", (EMBEDDED, None)
    ),
    "text-classification": Task(
        "fastx.pipelines.text_classification",
        "TextClassificationPipeline",
        "AutoModelForSequenceClassification",
        ("distilbert/distilbert-base-uncased-finetuned-sst-2-english", "714eb0f"),
    ),
    "token-classification": Task(
        "fastx.pipelines.token_classification",
        "TokenClassificationPipeline",
        "AutoModelForTokenClassification",
        ("dbmdz/bert-large-cased-finetuned-conll03-english", "4c53496"),
    ),
    "fill-mask": Task(
        "fastx.pipelines.fill_mask",
        "FillMaskPipeline",
        "AutoModelForMaskedLM",
        ("distilbert/distilroberta-base", "fb53ab8"),
    ),
    "question-answering": Task(
        "fastx.pipelines.question_answering",
        "QuestionAnsweringPipeline",
        "AutoModelForQuestionAnswering",
        ("distilbert/distilbert-base-cased-distilled-squad", "564e9b5"),
    ),
    "zero-shot-classification": Task(
        "fastx.pipelines.zero_shot_classification",
        "ZeroShotClassificationPipeline",
        "AutoModelForSequenceClassification",
        # transformers' default is facebook/bart-large-mnli, an architecture fastx does not have
        ("FacebookAI/roberta-large-mnli", None),
    ),
    "image-classification": Task(
        "fastx.pipelines.image_classification",
        "ImageClassificationPipeline",
        "AutoModelForImageClassification",
        ("google/vit-base-patch16-224", "3f49326"),
        needs="image_processor",
    ),
    "text-generation": Task(
        "fastx.pipelines.text_generation", "TextGenerationPipeline", "AutoModelForCausalLM", (EMBEDDED, None)
    ),
}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}


def normalize_task(task: Any) -> str:
    if not isinstance(task, str):
        raise ValueError(f"task: expected a task name such as 'text-classification', got {task!r}")
    name = ALIASES.get(task, task)
    if name not in TASKS:
        known = sorted([*TASKS, *ALIASES])
        raise ValueError(f"task: unknown task {task!r} (fastx knows: {', '.join(known)})")
    return name


def _default_model(name: str, spec: Task) -> tuple[str, str | None]:
    hub_id, revision = spec.default
    if hub_id != EMBEDDED:
        return hub_id, revision
    from fastx.checkpoints import defaults

    find = defaults.default_generation_model if name == "text-generation" else defaults.default_embedding_model
    try:
        return find(), None
    except defaults.DefaultModelMissing as exc:
        raise OSError(f"{name}: no model= given and {exc}; or pass model=<Hub id or local folder>") from None


def _load_model(name: str, spec: Task, model: str | os.PathLike, revision, device, dtype, model_kwargs: dict):
    import fastx.models as models

    auto = getattr(models, spec.auto_class)
    try:
        return auto.from_pretrained(model, revision=revision, device=device, dtype=dtype, **model_kwargs)
    except ValueError as exc:
        raise ValueError(f"{name}: model {str(model)!r} does not fit this task ({spec.auto_class}): {exc}") from None


def _check_model_object(name: str, spec: Task, model: torch.nn.Module) -> None:
    """A model given as an object must be an instance of a class the task's Auto class would build."""
    from fastx.models.auto import MODEL_TYPES

    accepted = {cls for _, classes in MODEL_TYPES.values() for auto, cls in classes.items() if auto == spec.auto_class}
    if type(model).__name__ not in accepted:
        raise ValueError(
            f"{name}: model {type(model).__name__} does not fit this task (it needs a {spec.auto_class} model: "
            f"{', '.join(sorted(accepted))})"
        )


def _source_of(model) -> str | None:
    return model if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", None)


def _load_preprocessor(name: str, spec: Task, given, source, revision):
    if given is not None and not isinstance(given, (str, os.PathLike)):
        return given
    where = given if given is not None else source
    if where is None:
        raise ValueError(f"{name}: cannot tell where the model's {spec.needs} is; pass {spec.needs}=")
    if spec.needs == "image_processor":
        from fastx.processing import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(where, revision=revision if given is None else None)
    from fastx.processing import AutoTokenizer

    return AutoTokenizer.from_pretrained(where, revision=revision if given is None else None)


def pipeline(
    task: str,
    model: str | os.PathLike | torch.nn.Module | None = None,
    tokenizer: Any = None,
    device: str | int | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    batch_size: int | None = None,
    *,
    image_processor: Any = None,
    revision: str | None = None,
    model_kwargs: dict | None = None,
    **kwargs,
):
    """A pipeline for `task` (transformers' names and aliases) on a fastx model; call it on inputs.

    `model`: a Hub id, a local folder, or a fastx model object (default: the task's default model).
    `device`: "cpu", "cuda", "cuda:1", a GPU index, or None (CUDA when available). Other keyword
    arguments are the task's call parameters, fixed for every call (e.g. top_k=3).
    """
    name = normalize_task(task)
    spec = TASKS[name]
    if isinstance(device, int) and not isinstance(device, bool):
        device = "cpu" if device < 0 else f"cuda:{device}"  # transformers' device=-1 is the CPU
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    defaulted = model is None
    if defaulted:
        model, default_revision = _default_model(name, spec)
        revision = revision if revision is not None else default_revision
    try:
        if isinstance(model, torch.nn.Module):
            _check_model_object(name, spec, model)
            loaded = model
        elif isinstance(model, (str, os.PathLike)):
            loaded = _load_model(name, spec, model, revision, device, dtype, model_kwargs or {})
        else:
            raise ValueError(f"model: expected a Hub id, a local folder or a fastx model, got {type(model).__name__}")
        preprocessor = _load_preprocessor(
            name, spec, image_processor if spec.needs == "image_processor" else tokenizer, _source_of(model), revision
        )
    except OSError as exc:
        if not defaulted:
            raise
        raise OSError(
            f"{name}: no model= given, and its default checkpoint {model!r} (revision {revision}) could not be "
            f"loaded: {exc}. Pass model=<Hub id or local folder> to use another checkpoint"
        ) from None
    pipeline_class = getattr(importlib.import_module(spec.module), spec.pipeline_class)
    if spec.needs == "image_processor":
        return pipeline_class(loaded, image_processor=preprocessor, batch_size=batch_size, **kwargs)
    return pipeline_class(loaded, preprocessor, batch_size=batch_size, **kwargs)
