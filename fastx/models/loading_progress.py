"""Progress of a checkpoint load, for a caller that shows it (fastx's CLI draws a bar on a terminal).

The loader reports each checkpoint tensor it has read to the callback set around the load; no
callback (the default) costs one context-variable read per load. A context variable rather than an
argument: the load is reached through from_pretrained, from_gguf and LLM alike, none of which should
grow a UI parameter.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Callback = Callable[[int, "int | None"], None]  # (tensors read so far, tensors in all or None)
_CALLBACK: contextvars.ContextVar[Callback | None] = contextvars.ContextVar("fastx_loading_progress", default=None)
T = TypeVar("T")


@contextlib.contextmanager
def loading_progress(callback: Callback) -> Iterator[None]:
    """Loads inside the block call `callback(done, total)` after each checkpoint tensor."""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def tracked(entries: Iterable[T], total: Callable[[], int | None]) -> Iterator[T]:
    """`entries`, reporting each to the active callback; `total` is only computed when one is set."""
    callback = _CALLBACK.get()
    if callback is None:
        yield from entries
        return
    count = total()
    callback(0, count)
    for done, entry in enumerate(entries, 1):
        yield entry
        callback(done, count)
