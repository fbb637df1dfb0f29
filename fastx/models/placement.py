"""Which device a model loads on: `device=` or transformers' `device_map=`, checked before any weight moves.

fastx places a whole model on one device. transformers' single-device `device_map` forms are accepted
("cpu", "cuda", "cuda:1", an index, a torch.device, "auto", {"": device}); a map that splits the
model across devices is refused with what to do instead (tensor parallelism, when it lands, is the
way to use several devices). A CUDA device this torch cannot reach is a ValueError naming it, not
torch's AssertionError deep in the first tensor copy.
"""

from __future__ import annotations

from typing import Any

import torch


def default_device() -> torch.device:
    """cuda when a CUDA device is present, else cpu (`device_map="auto"`, LLM's default)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _parse(value: Any, argument: str) -> torch.device:
    if isinstance(value, torch.device):
        device = value
    elif isinstance(value, int) and not isinstance(value, bool):
        device = torch.device("cuda", value)  # transformers: an index is a CUDA device
    elif isinstance(value, str):
        if value == "auto":
            return default_device()
        try:
            device = torch.device(value)
        except RuntimeError:
            raise ValueError(
                f'{argument}: expected "auto", "cpu", "cuda", "cuda:N" or a device index, got {value!r}'
            ) from None
    else:
        raise ValueError(f"{argument}: expected a device name, index or torch.device, got {type(value).__name__}")
    return check_device(device, argument)


def check_device(device: torch.device, argument: str = "device") -> torch.device:
    """`device` if this process can use it, else a ValueError that says why."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{argument}: {str(device)!r} asked for, and this torch has no CUDA device "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False); use 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ValueError(f"{argument}: {str(device)!r} asked for, and this machine has {count} CUDA device(s)")
    return device


def resolve_device(device: Any = None, device_map: Any = None) -> torch.device:
    """The one device a model loads on (cpu when neither argument is given, as transformers does)."""
    from_map = None
    if device_map is not None:
        if isinstance(device_map, dict):
            if set(device_map) != {""}:
                raise ValueError(
                    "device_map: fastx loads a model on one device; pass a device, 'auto' or {'': device}, "
                    f"got a map of {len(device_map)} module(s) ({', '.join(map(repr, list(device_map)[:3]))}, ...)"
                )
            from_map = _parse(device_map[""], "device_map['']")
        else:
            from_map = _parse(device_map, "device_map")
    from_device = _parse(device, "device") if device is not None else None
    if from_map is not None and from_device is not None and from_map != from_device:
        raise ValueError(f"device={str(from_device)!r} and device_map={device_map!r} disagree; pass one of them")
    return from_map or from_device or torch.device("cpu")
