"""`fill-mask`: the most likely tokens for each mask token, as transformers' FillMaskPipeline.

`top_k` (5) candidates per mask with their probability, token id, token text and the filled-in
sequence; `targets` restricts the candidates to given words (a word outside the vocabulary is
replaced by its first token, as transformers does). Several masks give one list per mask.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fastx.pipelines.base import Params, TextPipeline
from fastx.pipelines.feature_extraction import tokenize_params
from fastx.pipelines.text_classification import check_top_k

logger = logging.getLogger(__name__)


class FillMaskPipeline(TextPipeline):
    task = "fill-mask"

    def _sanitize_parameters(self, top_k=None, targets=None, tokenizer_kwargs=None, **kwargs) -> Params:
        super()._sanitize_parameters(**kwargs)
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"{self.task}: the tokenizer {self.tokenizer.name_or_path!r} defines no mask_token")
        post: dict[str, Any] = {}
        if top_k is not None:
            check_top_k(self.task, top_k, allow_none=False)
            post["top_k"] = top_k
        if targets is not None:
            post["target_ids"] = self.target_ids(targets)
        return tokenize_params(self.task, tokenizer_kwargs), {}, post

    def target_ids(self, targets) -> np.ndarray:
        targets = [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"{self.task}: targets: expected a string or a list of strings, got {targets!r}")
        vocab = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            token_id = vocab.get(target)
            if token_id is None:
                pieces = self.tokenizer(target, add_special_tokens=False, max_length=1, truncation=True)["input_ids"]
                if not pieces:
                    logger.warning("fill-mask: target %r is not in the vocabulary and has no token; ignored", target)
                    continue
                token_id = pieces[0]
                logger.warning(
                    "fill-mask: target %r is not in the vocabulary; replaced by %r",
                    target,
                    self.tokenizer.convert_ids_to_tokens(token_id),
                )
            ids.append(token_id)
        ids = list(set(ids))  # transformers' order, so that ties rank alike
        if not ids:
            raise ValueError(f"{self.task}: targets: none of {targets!r} maps to a token")
        return np.array(ids)

    def preprocess(self, item, **tokenize) -> list[dict[str, Any]]:
        if not isinstance(item, str):
            raise ValueError(f"{self.task}: inputs: expected a string or a list of strings, got {type(item).__name__}")
        feature = dict(self.tokenizer(item, **tokenize))
        if self.tokenizer.mask_token_id not in feature["input_ids"]:
            raise ValueError(f"{self.task}: inputs: no mask token ({self.tokenizer.mask_token}) in {item!r:.80}")
        return [feature]

    def postprocess(self, features, outputs, top_k: int = 5, target_ids: np.ndarray | None = None):
        if target_ids is not None and target_ids.shape[0] < top_k:
            top_k = target_ids.shape[0]
        input_ids = torch.tensor(features[0]["input_ids"])
        masked = torch.nonzero(input_ids == self.tokenizer.mask_token_id, as_tuple=False).squeeze(-1)
        probs = outputs[0][masked].softmax(dim=-1)  # (masks, V)
        if target_ids is not None:
            probs = probs[..., torch.from_numpy(target_ids)]
        values, predictions = probs.topk(min(top_k, probs.shape[-1]))
        single = values.shape[0] == 1
        result = []
        for i, (row_values, row_predictions) in enumerate(zip(values.tolist(), predictions.tolist())):
            row = []
            for value, prediction in zip(row_values, row_predictions):
                token = int(target_ids[prediction]) if target_ids is not None else prediction
                tokens = input_ids.clone()
                tokens[masked[i]] = token
                tokens = (
                    tokens[tokens != self.tokenizer.pad_token_id] if self.tokenizer.pad_token_id is not None else tokens
                )
                sequence = self.tokenizer.decode(tokens.tolist(), skip_special_tokens=single)
                row.append(
                    {"score": value, "token": token, "token_str": self.tokenizer.decode([token]), "sequence": sequence}
                )
            result.append(row)
        return result[0] if single else result

    def __call__(self, inputs, batch_size=None, **kwargs):
        outputs = super().__call__(inputs, batch_size, **kwargs)
        if isinstance(inputs, list) and len(inputs) == 1:
            return outputs[0]  # transformers unwraps a list of one
        return outputs
