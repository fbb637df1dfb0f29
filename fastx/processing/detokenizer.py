"""Streaming detokenization: token ids in, new text out, never a broken character."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastx.processing.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Token ids in, new text out, one token at a time, in O(1) per token (vLLM's prefix-offset scheme).

    Each step decodes only a short window `ids[prefix:]` and compares it with the previous window
    `ids[prefix:read]`; both start at the same token, so decoder quirks at a window's start (a stripped
    leading space, a '##' continuation) cancel out. Text ending in U+FFFD is held back: it is an
    unfinished multi-byte character until a later token completes it. `flush()` returns what is
    still held back at the end (an unresolved U+FFFD that `decode` would also show).
    """

    # Tokens of the prompt decoded as left context so the first generated token gets its spacing right.
    PROMPT_CONTEXT = 5

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int] | None = None, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids.tolist() if hasattr(prompt_ids, "tolist") else prompt_ids or [])
        self.read_offset = len(self.ids)  # text of ids[:read_offset] has been emitted
        self.prefix_offset = max(self.read_offset - self.PROMPT_CONTEXT, 0)  # start of the decode window

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append one token id; return the text it completes ("" while a character is unfinished)."""
        self.ids.append(int(token_id))
        prefix_text = self._decode(self.prefix_offset, self.read_offset)
        new_text = self._decode(self.prefix_offset)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Text still held back (a trailing U+FFFD that never resolved); call once generation ends."""
        prefix_text = self._decode(self.prefix_offset, self.read_offset)
        new_text = self._decode(self.prefix_offset)
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :]
