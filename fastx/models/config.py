"""Reading a checkpoint's config.json into small typed configs, with errors that name the field.

Each model family declares a dataclass of the hyperparameters it uses; `read_config` fills it
from config.json, checking every field's type, so a broken config fails at load time with a
ValueError naming the file and the field instead of deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation)


def config_from_dict(cls: type[T], data: dict[str, Any], source: str, aliases: dict[str, str] | None = None) -> T:
    """Build dataclass `cls` from `data`; fields without defaults are required.

    `aliases` maps a field to an alternative key some checkpoints use (GPT-2's n_embd for
    hidden_size). Unknown keys are ignored: configs carry many fields inference does not need.
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        key = field.name
        if key not in data and aliases and aliases.get(key) in data:
            key = aliases[key]
        if key not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ValueError(f"{source}: missing required field {field.name!r}")
            continue
        value = data[key]
        if not _matches(value, hints[field.name]):
            expected = getattr(hints[field.name], "__name__", str(hints[field.name]))
            raise ValueError(f"{source}: field {key!r} must be {expected}, got {type(value).__name__} {value!r:.80}")
        if hints[field.name] is float and isinstance(value, int):
            value = float(value)
        values[field.name] = value
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate(source)
    return config


def check_multiple(source: str, config: Any, field: str, of_field: str) -> None:
    """`config.field` must be a positive multiple of `config.of_field` (hidden size of heads, ...)."""
    value, divisor = getattr(config, field), getattr(config, of_field)
    if divisor <= 0 or value % divisor:
        raise ValueError(f"{source}: {field} {value} is not a multiple of {of_field} {divisor}")


def check_supported(source: str, config: Any, field: str, supported) -> None:
    """`config.field` must be one of `supported` (activation names, rope types, ...)."""
    value = getattr(config, field)
    if value not in supported:
        raise ValueError(f"{source}: {field} {value!r} not supported (supported: {', '.join(supported)})")
