"""`zero-shot-classification`: rank candidate labels by an NLI model's entailment, as transformers does.

Each (text, label) pair becomes the premise `text` and the hypothesis `hypothesis_template`
filled with the label; the model's entailment logits are soft-maxed over the labels, or, with
`multi_label=True` (or a single label), entailment against contradiction per label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastx.pipelines.base import Params, TextPipeline, id2label

DEFAULT_TEMPLATE = "This example is {}."


def parse_labels(task: str, labels: Any) -> list[str]:
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(
            f"{task}: candidate_labels: expected a non-empty list of strings (or one comma-separated string), "
            f"got {labels!r}"
        )
    return list(labels)


class ZeroShotClassificationPipeline(TextPipeline):
    task = "zero-shot-classification"

    def __init__(self, model, tokenizer, **kwargs):
        super().__init__(model, tokenizer, **kwargs)
        # transformers' entailment_id: the first label (in label2id order) that starts with "entail"
        labels = id2label(model.config)
        self.entailment_id = next((i for i, name in labels.items() if name.lower().startswith("entail")), -1)

    def _sanitize_parameters(
        self, candidate_labels=None, hypothesis_template=None, multi_label=None, **kwargs
    ) -> Params:
        super()._sanitize_parameters(**kwargs)
        pre: dict[str, Any] = {}
        if candidate_labels is not None:
            pre["candidate_labels"] = parse_labels(self.task, candidate_labels)
        if hypothesis_template is not None:
            if not isinstance(hypothesis_template, str) or hypothesis_template.format("\0") == hypothesis_template:
                raise ValueError(
                    f"{self.task}: hypothesis_template: expected a string with a {{}} where the label goes, "
                    f"got {hypothesis_template!r}"
                )
            pre["hypothesis_template"] = hypothesis_template
        post = {} if multi_label is None else {"multi_label": bool(multi_label)}
        return pre, {}, post

    def __call__(self, sequences, *args, batch_size=None, **kwargs):
        if len(args) == 1 and "candidate_labels" not in kwargs:
            kwargs["candidate_labels"] = args[0]  # transformers takes the labels as the second positional
        elif args:
            raise ValueError(f"{self.task}: unexpected positional arguments {args!r}; pass candidate_labels=")
        return super().__call__(sequences, batch_size, **kwargs)

    def preprocess(self, item, candidate_labels=None, hypothesis_template=DEFAULT_TEMPLATE) -> list[dict[str, Any]]:
        if candidate_labels is None:
            raise ValueError(f"{self.task}: candidate_labels: required, got none")
        if not isinstance(item, str):
            raise ValueError(f"{self.task}: inputs: expected a string or a list of strings, got {type(item).__name__}")
        truncation = "only_first" if self.tokenizer.model_max_length <= 10**20 else False
        features = []
        for label in candidate_labels:
            encoded = self.tokenizer(item, hypothesis_template.format(label), truncation=truncation)
            features.append({**encoded, "candidate_label": label, "sequence": item})
        return features

    def postprocess(self, features, outputs, multi_label: bool = False):
        labels = [f["candidate_label"] for f in features]
        logits = np.stack([o.numpy() for o in outputs])[None]  # (1, labels, classes)
        if multi_label or len(labels) == 1:
            contradiction_id = -1 if self.entailment_id == 0 else 0
            pair = logits[..., [contradiction_id, self.entailment_id]]
            scores = (np.exp(pair) / np.exp(pair).sum(-1, keepdims=True))[..., 1]
        else:
            entail = logits[..., self.entailment_id]
            scores = np.exp(entail) / np.exp(entail).sum(-1, keepdims=True)
        order = list(reversed(scores[0].argsort()))
        return {
            "sequence": features[0]["sequence"],
            "labels": [labels[i] for i in order],
            "scores": scores[0, order].tolist(),
        }
