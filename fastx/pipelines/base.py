"""What every pipeline shares: parameters, input shapes (one item, a list, a stream) and batching.

A call turns each input item into one or more features (`preprocess`; a long text split into
windows gives several), runs the model on features `batch_size` at a time (`forward`), and
hands each item its features' outputs (`postprocess`). A list is consumed at once and gives a
list; a generator or a dataset-like iterable gives a lazy iterator that reads about
`batch_size` features ahead; anything else is one item and gives its one result, as in
transformers' Pipeline.__call__.

Text batches go to the model padded with an attention mask, and fastx's encoders pack the real
tokens end to end before the first layer (fastx.models.packing): padding costs no compute.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable, Iterator
from typing import Any

import torch

Params = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]  # preprocess, forward, postprocess


def is_stream(inputs: Any) -> bool:
    """Generators, iterators and dataset-like objects: streamed lazily (strings, dicts, tuples are items)."""
    if isinstance(inputs, (types.GeneratorType, Iterator)):
        return True
    if isinstance(inputs, (str, bytes, dict, list, tuple, torch.Tensor)) or type(inputs).__module__.startswith(
        ("numpy", "PIL.")
    ):
        return False
    return isinstance(inputs, torch.utils.data.Dataset) or (hasattr(inputs, "__iter__") and hasattr(inputs, "__len__"))


def check_batch_size(batch_size: Any) -> int | None:
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size: expected an integer >= 1 or None, got {batch_size!r}")
    return batch_size


def id2label(config: Any) -> dict[int, str]:
    """The model's label names by class index; LABEL_i where the config names none, as transformers."""
    names = getattr(config, "id2label", None) or {}
    count = getattr(config, "labels", None) or len(names) or 2
    table = {int(k): v for k, v in names.items()}
    return {i: table.get(i, f"LABEL_{i}") for i in range(count)}


class Pipeline:
    """Base class: subclasses define `task`, `_sanitize_parameters`, `preprocess`, `forward`, `postprocess`."""

    task = ""

    def __init__(self, model, tokenizer=None, image_processor=None, batch_size: int | None = None, **kwargs):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.batch_size = check_batch_size(batch_size)
        self._init_params = self._sanitize_parameters(**kwargs)

    @property
    def device(self) -> torch.device:
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    # -- what a task defines ---------------------------------------------------------------------
    def _sanitize_parameters(self, **kwargs) -> Params:
        """Split call (or construction) keyword arguments into the three steps' parameters."""
        if kwargs:
            raise ValueError(f"{self.task}: unexpected argument(s) {sorted(kwargs)}")
        return {}, {}, {}

    def preprocess(self, item, **params) -> list[dict[str, Any]]:
        raise NotImplementedError

    def forward(self, features: list[dict[str, Any]], **params) -> list[Any]:
        raise NotImplementedError

    def postprocess(self, features: list[dict[str, Any]], outputs: list[Any], **params):
        raise NotImplementedError

    # -- the call ----------------------------------------------------------------------------------
    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        batch_size = check_batch_size(batch_size) or self.batch_size or 1
        call = self._sanitize_parameters(**kwargs)
        params = tuple({**init, **now} for init, now in zip(self._init_params, call))
        if isinstance(inputs, list):
            return list(self._run(inputs, batch_size, *params))
        if is_stream(inputs):
            return self._run(inputs, batch_size, *params)
        return next(self._run([inputs], batch_size, *params))

    def _run(self, items: Iterable, batch_size: int, pre: dict, fwd: dict, post: dict) -> Iterator:
        group: list[list[dict[str, Any]]] = []
        pending = 0
        for item in items:
            features = self.preprocess(item, **pre)
            group.append(features)
            pending += len(features)
            if pending >= batch_size:
                yield from self._finish(group, batch_size, fwd, post)
                group, pending = [], 0
        if group:
            yield from self._finish(group, batch_size, fwd, post)

    def _finish(self, group: list[list[dict[str, Any]]], batch_size: int, fwd: dict, post: dict) -> Iterator:
        flat = [feature for features in group for feature in features]
        outputs: list[Any] = []
        with torch.inference_mode():
            for start in range(0, len(flat), batch_size):
                outputs += self.forward(flat[start : start + batch_size], **fwd)
        offset = 0
        for features in group:
            yield self.postprocess(features, outputs[offset : offset + len(features)], **post)
            offset += len(features)


class TextPipeline(Pipeline):
    """Pipelines over tokenized text: features carry `input_ids` (and `token_type_ids`) as lists."""

    def __init__(self, model, tokenizer, **kwargs):
        if tokenizer is None:
            raise ValueError(f"tokenizer: the {self.task} pipeline needs a tokenizer, got None")
        self._model_inputs = set(inspect.signature(model.forward).parameters)
        super().__init__(model, tokenizer, **kwargs)

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Right-padded (B, L) input_ids, attention_mask and, where the model takes them, token_type_ids."""
        length = max(len(f["input_ids"]) for f in features)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(features), length), pad, dtype=torch.long)
        mask = torch.zeros(len(features), length, dtype=torch.long)
        types = torch.zeros(len(features), length, dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"])
            mask[row, :n] = 1
            if "token_type_ids" in feature:
                types[row, :n] = torch.tensor(feature["token_type_ids"])
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._model_inputs and any("token_type_ids" in f for f in features):
            batch["token_type_ids"] = types
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, features: list[dict[str, Any]], **params) -> list[torch.Tensor]:
        """The model's first output per feature on the CPU in fp32: (n, ...) per token, or the row itself."""
        first = self.model(**self.collate(features))[0].float().cpu()
        if first.dim() >= 3:  # per token (B, L, ...): each feature's real tokens
            return [first[row, : len(f["input_ids"])] for row, f in enumerate(features)]
        return list(first.unbind(0))
