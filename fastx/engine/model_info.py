"""What the engine reads off the model and its tokenizer: end-of-sequence ids and the maximum length.

One place, so `LLM` and `model.generate` stop on the same tokens and bound sequences the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastx.checkpoints.hub import read_json


def token_id_set(value: int | Iterable[int] | None) -> set[int]:
    """Configs write eos_token_id as one id, a list of ids or null."""
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value if v is not None}


def eos_token_ids(model: Any, tokenizer: Any = None) -> set[int]:
    """Every id that ends a sequence: the config's, the checkpoint's generation_config.json's, the tokenizer's.

    Instruct checkpoints often list their end-of-turn token only in generation_config.json (as
    transformers reads it), so the config alone would run past the end of an answer.
    """
    ids = token_id_set(getattr(model.config, "eos_token_id", None))
    folder = getattr(model, "name_or_path", None)
    if isinstance(folder, (str, os.PathLike)) and os.path.isdir(folder):
        generation = read_json(Path(folder) / "generation_config.json", missing_ok=True)
        ids |= token_id_set(generation.get("eos_token_id"))
    if tokenizer is not None:
        ids |= token_id_set(getattr(tokenizer, "eos_token_id", None))
    return ids


def max_model_len(config: Any) -> int:
    """The longest sequence the model's positions cover (Llama-style or GPT-2-style config)."""
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__}: no max_position_embeddings / n_positions to bound sequence length")
