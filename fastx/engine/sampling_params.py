"""SamplingParams: vLLM's sampling options, validated as vLLM validates them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


class SamplingParamsError(ValueError):
    """A bad SamplingParams field; `field` and `reason` let a front end name its own argument
    (`--max-tokens`, `max_new_tokens`, the request's `max_tokens`) without parsing the message."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"SamplingParams.{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    _stop_strings: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        def fail(name, expected, got):
            raise SamplingParamsError(name, f"expected {expected}, got {got!r}")

        def is_int(x):
            return isinstance(x, int) and not isinstance(x, bool)

        def is_num(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        if not is_int(self.n) or self.n < 1:
            fail("n", "an integer >= 1", self.n)
        if not is_num(self.temperature) or self.temperature < 0:
            fail("temperature", "a finite number >= 0 (0 means greedy)", self.temperature)
        if not is_num(self.top_p) or not 0 < self.top_p <= 1:
            fail("top_p", "a number in (0, 1]", self.top_p)
        if not is_int(self.top_k) or (self.top_k < 1 and self.top_k not in (-1, 0)):
            fail("top_k", "-1 or 0 (disabled) or an integer >= 1", self.top_k)
        if not is_num(self.min_p) or not 0 <= self.min_p <= 1:
            fail("min_p", "a number in [0, 1]", self.min_p)
        if not is_num(self.repetition_penalty) or self.repetition_penalty <= 0:
            fail("repetition_penalty", "a number > 0", self.repetition_penalty)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not is_num(value) or not -2 <= value <= 2:
                fail(name, "a number in [-2, 2]", value)
        if self.max_tokens is not None and (not is_int(self.max_tokens) or self.max_tokens < 1):
            fail("max_tokens", "an integer >= 1 or None", self.max_tokens)
        if not is_int(self.min_tokens) or self.min_tokens < 0:
            fail("min_tokens", "an integer >= 0", self.min_tokens)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            fail("min_tokens", f"at most max_tokens ({self.max_tokens})", self.min_tokens)
        if self.seed is not None and not is_int(self.seed):
            fail("seed", "an integer or None", self.seed)
        if self.logprobs is not None and (not is_int(self.logprobs) or self.logprobs < 0):
            fail("logprobs", "an integer >= 0 or None", self.logprobs)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if not all(isinstance(s, str) and s for s in stop):
            fail("stop", "a non-empty string or a list of them", self.stop)
        self._stop_strings = stop
        ids = list(self.stop_token_ids or [])
        if not all(is_int(i) and i >= 0 for i in ids):
            fail("stop_token_ids", "a list of non-negative integers", self.stop_token_ids)
        self.stop_token_ids = ids
        if self.temperature < 1e-5:  # vLLM: below this, sampling is greedy
            self.temperature = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def stop_strings(self) -> list[str]:
        return self._stop_strings
