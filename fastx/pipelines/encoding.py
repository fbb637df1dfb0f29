"""Encodings with character offsets, special-token masks and overlapping windows, for span tasks.

fastx's Tokenizer returns ids and masks; token classification and question answering also need
each token's character span, which tokens are special, which sequence of a pair a token is in,
and long inputs cut into windows that overlap by `stride` tokens. The Rust `tokenizers` library
computes all of it; this class holds its own copy of the tokenizer's backend, because the
truncation (window) settings live on the backend object and the tokenizer's is shared.
"""

from __future__ import annotations

import threading

from tokenizers import Encoding
from tokenizers import Tokenizer as _Backend

from fastx.processing.tokenizer import LARGE_INTEGER


class SpanEncoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = _Backend.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()
        self._lock = threading.Lock()
        # WordPiece marks word continuations ("##"); without such a marker transformers guesses from spaces.
        self.subword_prefix = getattr(self.backend.model, "continuing_subword_prefix", None)

    @property
    def model_max_length(self) -> int | None:
        """The tokenizer's length limit, None when it declares none (transformers then truncates nothing)."""
        limit = self.tokenizer.model_max_length
        return limit if 0 < limit <= LARGE_INTEGER else None

    def encode(
        self,
        text: str,
        pair: str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        strategy: str = "longest_first",
    ) -> list[Encoding]:
        """The encoding of `text` (and `pair`), then its overflowing windows when `max_length` cuts it."""
        with self._lock:
            try:
                if max_length is not None:
                    self.backend.enable_truncation(
                        max_length, stride=stride, strategy=strategy, direction=self.tokenizer.truncation_side
                    )
                encoding = self.backend.encode(text, pair, add_special_tokens=True)
            finally:
                self.backend.no_truncation()
        return [encoding, *encoding.overflowing]

    def tokens_to_string(self, tokens: list[str]) -> str:
        """transformers' convert_tokens_to_string for tokenizers-backed tokenizers."""
        decoder = self.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def features_of(encoding: Encoding, with_types: bool) -> dict:
    """A pipeline feature: the model's inputs as lists plus the spans postprocessing reads."""
    feature = {
        "input_ids": list(encoding.ids),
        "offsets": list(encoding.offsets),
        "special_tokens_mask": list(encoding.special_tokens_mask),
        "sequence_ids": list(encoding.sequence_ids),
    }
    if with_types:
        feature["token_type_ids"] = list(encoding.type_ids)
    return feature
