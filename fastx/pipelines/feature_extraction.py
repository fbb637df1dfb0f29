"""`feature-extraction`: the encoder's last hidden states per token, as transformers' FeatureExtractionPipeline."""

from __future__ import annotations

from typing import Any

from fastx.pipelines.base import Params, TextPipeline

TOKENIZE_KEYS = ("truncation", "max_length", "add_special_tokens", "return_token_type_ids")


def tokenize_params(task: str, tokenize_kwargs: dict | None, truncation=None) -> dict[str, Any]:
    """The tokenizer arguments a text pipeline passes on; unknown ones fail here, named, not deep in a call."""
    params = dict(tokenize_kwargs or {})
    unknown = sorted(set(params) - set(TOKENIZE_KEYS))
    if unknown:
        raise ValueError(f"{task}: tokenize_kwargs: unsupported key(s) {unknown} (supported: {list(TOKENIZE_KEYS)})")
    if truncation is not None:
        if "truncation" in params:
            raise ValueError(f"{task}: truncation given twice (as an argument and in tokenize_kwargs)")
        params["truncation"] = truncation
    return params


class FeatureExtractionPipeline(TextPipeline):
    task = "feature-extraction"

    def _sanitize_parameters(self, truncation=None, tokenize_kwargs=None, return_tensors=None, **kwargs) -> Params:
        super()._sanitize_parameters(**kwargs)
        post = {} if return_tensors is None else {"return_tensors": bool(return_tensors)}
        return tokenize_params(self.task, tokenize_kwargs, truncation), {}, post

    def preprocess(self, item, **tokenize) -> list[dict[str, Any]]:
        if not isinstance(item, str):
            raise ValueError(f"{self.task}: inputs: expected a string or a list of strings, got {type(item).__name__}")
        return [dict(self.tokenizer(item, **tokenize))]

    def postprocess(self, features, outputs, return_tensors: bool = False):
        hidden = outputs[0][None]  # (1, L, E), as transformers returns a batch of one
        return hidden if return_tensors else hidden.tolist()
