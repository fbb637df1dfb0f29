"""`text-classification` / `sentiment-analysis`: labels and scores per text or text pair.

Follows transformers' TextClassificationPipeline: `top_k` (1 by default; None for every label),
`function_to_apply` (default: sigmoid for one label or multi-label problems, softmax for several,
none for regression), text pairs as {"text", "text_pair"} dicts, and its return shapes (a single
text without `top_k` gives a list of one dict).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastx.pipelines.base import Params, TextPipeline, id2label
from fastx.pipelines.feature_extraction import tokenize_params

FUNCTIONS = ("sigmoid", "softmax", "none")


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits


def default_function(config: Any) -> str:
    """transformers' choice when the caller names no function: from problem_type, else the label count."""
    problem, labels = getattr(config, "problem_type", None), len(id2label(config))
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or labels == 1:
        return "sigmoid"
    return "softmax"


def check_function(task: str, function: Any) -> str | None:
    if function is None:
        return None
    name = getattr(function, "value", function)  # transformers' ClassificationFunction enum members too
    if not isinstance(name, str) or name.lower() not in FUNCTIONS:
        raise ValueError(f"{task}: function_to_apply: expected one of {list(FUNCTIONS)}, got {function!r}")
    return name.lower()


def check_top_k(task: str, top_k: Any, allow_none: bool = True) -> None:
    if (top_k is None and allow_none) or (isinstance(top_k, int) and not isinstance(top_k, bool) and top_k >= 1):
        return
    raise ValueError(f"{task}: top_k: expected an integer >= 1{' or None' if allow_none else ''}, got {top_k!r}")


class TextClassificationPipeline(TextPipeline):
    task = "text-classification"

    def _sanitize_parameters(self, function_to_apply=None, top_k="", **tokenizer_kwargs) -> Params:
        post: dict[str, Any] = {}
        if top_k != "":  # "" is "not given": top_k=None means every label, sorted
            check_top_k(self.task, top_k)
            post.update(top_k=top_k, legacy=False)
        function = check_function(self.task, function_to_apply)
        if function is not None:
            post["function"] = function
        return tokenize_params(self.task, tokenizer_kwargs), {}, post

    def __call__(self, inputs, batch_size=None, **kwargs):
        result = super().__call__(inputs, batch_size, **kwargs)
        if isinstance(inputs, str) and "top_k" not in kwargs:
            return [result]  # transformers' legacy shape for one text (a top_k given at construction too)
        return result

    def preprocess(self, item, **tokenize) -> list[dict[str, Any]]:
        if isinstance(item, dict):
            if set(item) - {"text", "text_pair"} or "text" not in item:
                raise ValueError(
                    f"{self.task}: inputs: a text pair is a dict with keys 'text' and 'text_pair', "
                    f"got keys {sorted(item)}"
                )
            encoded = self.tokenizer(item["text"], item.get("text_pair"), **tokenize)
        elif isinstance(item, list) and len(item) == 1 and isinstance(item[0], list) and len(item[0]) == 2:
            encoded = self.tokenizer(item[0][0], item[0][1], **tokenize)  # transformers' older pair form
        elif isinstance(item, str):
            encoded = self.tokenizer(item, **tokenize)
        else:
            raise ValueError(
                f"{self.task}: inputs: expected a string, a {{'text', 'text_pair'}} dict or a list of them, "
                f"got {type(item).__name__}; send a text pair as {{'text': ..., 'text_pair': ...}}"
            )
        return [dict(encoded)]

    def postprocess(self, features, outputs, function: str | None = None, top_k: int | None = 1, legacy=True):
        labels = id2label(self.model.config)
        scores = apply_function(outputs[0].numpy(), function or default_function(self.model.config))
        if top_k == 1 and legacy:
            return {"label": labels[int(scores.argmax())], "score": scores.max().item()}
        ranked = [{"label": labels[i], "score": score.item()} for i, score in enumerate(scores)]
        if legacy:
            return ranked
        ranked.sort(key=lambda x: x["score"], reverse=True)
        return ranked if top_k is None else ranked[:top_k]
