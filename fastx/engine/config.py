"""EngineConfig: the engine's knobs, validated once where the user hands them in."""

from __future__ import annotations

from dataclasses import dataclass


def check_positive_int(name: str, value: object, *, optional: bool = False, what: str = "a positive integer") -> None:
    """Raise ValueError naming `name` unless `value` is an int >= 1 (or None when `optional`)."""
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected {what}{' or None' if optional else ''}, got {value!r}")


@dataclass(slots=True, kw_only=True)
class EngineConfig:
    """Keyword-only: eight knobs of which most are ints, so a positional call could silently swap two."""

    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None  # bytes; ignored when num_kv_blocks is given
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    seed: int = 0
    enforce_eager: bool = False  # CUDA: run decode steps eagerly instead of replaying captured graphs (vLLM's)
    num_threads: int | None = None  # CPU: torch's intra-op threads; None = the idle cores (fastx.engine.threads)

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("num_kv_blocks", self.num_kv_blocks, optional=True)
        check_positive_int("num_threads", self.num_threads, optional=True)
        check_positive_int("kv_cache_memory", self.kv_cache_memory, optional=True, what="a positive number of bytes")
