"""`token-classification` / `ner`: a label per token, or per word and entity with aggregation.

A port of transformers' TokenClassificationPipeline: softmax scores per token, special tokens
dropped, `word` and character `start`/`end` from the tokenizer's offsets, subwords found by the
WordPiece "##" marker (or, for tokenizers without one, transformers' space heuristic), and the
aggregation strategies none / simple / first / average / max; `stride` splits texts longer than
the model into overlapping windows whose entities are merged as transformers merges them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from fastx.pipelines.base import Params, TextPipeline, id2label
from fastx.pipelines.encoding import SpanEncoder, features_of

STRATEGIES = ("none", "simple", "first", "average", "max")
WORD_STRATEGIES = ("first", "average", "max")


def check_strategy(task: str, strategy: Any) -> str | None:
    if strategy is None:
        return None
    name = getattr(strategy, "value", strategy)  # transformers' AggregationStrategy members too
    if not isinstance(name, str) or name.lower() not in STRATEGIES:
        raise ValueError(f"{task}: aggregation_strategy: expected one of {list(STRATEGIES)}, got {strategy!r}")
    return name.lower()


class TokenClassificationPipeline(TextPipeline):
    task = "token-classification"

    def __init__(self, model, tokenizer, **kwargs):
        self.encoder = SpanEncoder(tokenizer)
        super().__init__(model, tokenizer, **kwargs)

    def _sanitize_parameters(self, ignore_labels=None, aggregation_strategy=None, stride=None, **kwargs) -> Params:
        super()._sanitize_parameters(**kwargs)
        post: dict[str, Any] = {}
        strategy = check_strategy(self.task, aggregation_strategy)
        if strategy is not None:
            post["strategy"] = strategy
        if ignore_labels is not None:
            if not isinstance(ignore_labels, (list, tuple, set)) or not all(isinstance(x, str) for x in ignore_labels):
                raise ValueError(f"{self.task}: ignore_labels: expected a list of label strings, got {ignore_labels!r}")
            post["ignore_labels"] = list(ignore_labels)
        pre: dict[str, Any] = {}
        if stride is not None:
            limit = self.encoder.model_max_length
            if not isinstance(stride, int) or isinstance(stride, bool) or stride < 0:
                raise ValueError(f"{self.task}: stride: expected an integer >= 0, got {stride!r}")
            if limit is None or stride >= limit:
                raise ValueError(
                    f"{self.task}: stride: must be less than the tokenizer's model_max_length ({limit}), got {stride}"
                )
            if strategy == "none":
                raise ValueError(
                    f"{self.task}: stride: windows are merged per entity, which aggregation_strategy='none' "
                    "does not form; choose 'simple', 'first', 'average' or 'max'"
                )
            pre["stride"] = stride
        return pre, {}, post

    def preprocess(self, item, stride: int | None = None) -> list[dict[str, Any]]:
        if not isinstance(item, str):
            raise ValueError(f"{self.task}: inputs: expected a string or a list of strings, got {type(item).__name__}")
        limit = self.encoder.model_max_length
        windows = self.encoder.encode(item, max_length=limit, stride=stride or 0)
        if stride is None:
            windows = windows[:1]  # without a stride transformers keeps only the first window
        with_types = "token_type_ids" in self.tokenizer.model_input_names
        return [{**features_of(w, with_types), "sentence": item} for w in windows]

    def postprocess(self, features, outputs, strategy: str = "none", ignore_labels=None):
        ignore = ["O"] if ignore_labels is None else ignore_labels
        entities = []
        for feature, logits in zip(features, outputs):
            logits = logits.numpy()
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            scores = shifted / shifted.sum(axis=-1, keepdims=True)
            grouped = self.aggregate(self.gather_pre_entities(feature, scores, strategy), strategy)
            entities += [e for e in grouped if e.get("entity", e.get("entity_group")) not in ignore]
        return merge_overlapping(entities) if len(features) > 1 else entities

    def gather_pre_entities(self, feature: dict, scores: np.ndarray, strategy: str) -> list[dict]:
        sentence, encoder = feature["sentence"], self.encoder
        unk = self.tokenizer.unk_token_id
        found = []
        for idx, token_scores in enumerate(scores):
            if feature["special_tokens_mask"][idx]:
                continue
            token_id = feature["input_ids"][idx]
            word = encoder.backend.id_to_token(token_id)
            start, end = feature["offsets"][idx]
            word_ref = sentence[start:end]
            if encoder.subword_prefix:
                is_subword = len(word) != len(word_ref)
            else:
                if strategy in WORD_STRATEGIES:
                    warnings.warn(
                        "Tokenizer does not support real words, using fallback heuristic", UserWarning, stacklevel=3
                    )
                is_subword = start > 0 and " " not in sentence[start - 1 : start + 1]
            if token_id == unk:
                word, is_subword = word_ref, False
            found.append(
                {
                    "word": word,
                    "scores": token_scores,
                    "start": start,
                    "end": end,
                    "index": idx,
                    "is_subword": is_subword,
                }
            )
        return found

    def aggregate(self, pre_entities: list[dict], strategy: str) -> list[dict]:
        labels = id2label(self.model.config)
        if strategy in ("none", "simple"):
            entities = []
            for pre in pre_entities:
                best = int(pre["scores"].argmax())
                entities.append(
                    {
                        "entity": labels[best],
                        "score": pre["scores"][best],
                        "index": pre["index"],
                        "word": pre["word"],
                        "start": pre["start"],
                        "end": pre["end"],
                    }
                )
        else:
            entities = self.aggregate_words(pre_entities, strategy)
        return entities if strategy == "none" else self.group_entities(entities)

    def aggregate_word(self, entities: list[dict], strategy: str) -> dict:
        labels = id2label(self.model.config)
        word = self.encoder.tokens_to_string([e["word"] for e in entities])
        if strategy == "first":
            scores = entities[0]["scores"]
        elif strategy == "max":
            scores = max(entities, key=lambda e: e["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([e["scores"] for e in entities]), axis=0)
        best = int(scores.argmax())
        return {
            "entity": labels[best],
            "score": scores[best],
            "word": word,
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def aggregate_words(self, entities: list[dict], strategy: str) -> list[dict]:
        words, group = [], None
        for entity in entities:
            if group is None:
                group = [entity]
            elif entity["is_subword"]:
                group.append(entity)
            else:
                words.append(self.aggregate_word(group, strategy))
                group = [entity]
        if group is not None:
            words.append(self.aggregate_word(group, strategy))
        return words

    def group_sub_entities(self, entities: list[dict]) -> dict:
        return {
            "entity_group": entities[0]["entity"].split("-", 1)[-1],
            "score": np.mean(np.nanmean([e["score"] for e in entities])),
            "word": self.encoder.tokens_to_string([e["word"] for e in entities]),
            "start": entities[0]["start"],
            "end": entities[-1]["end"],
        }

    def group_entities(self, entities: list[dict]) -> list[dict]:
        groups, current = [], []
        for entity in entities:
            if current:
                bi, tag = bio_tag(entity["entity"])
                _, last_tag = bio_tag(current[-1]["entity"])
                if tag != last_tag or bi == "B":
                    groups.append(self.group_sub_entities(current))
                    current = []
            current.append(entity)
        if current:
            groups.append(self.group_sub_entities(current))
        return groups


def bio_tag(name: str) -> tuple[str, str]:
    """("B" or "I", tag); a label outside the B-/I- scheme continues (is "I")."""
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def merge_overlapping(entities: list[dict]) -> list[dict]:
    """Entities of overlapping windows: of two that overlap, the longer (then the higher-scored) stays."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda e: e["start"])
    merged, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged
