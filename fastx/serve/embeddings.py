"""A resident sentence encoder for /v1/embeddings: loaded once, used from a worker thread.

The vectors are fastx.pipelines.sentence_embeddings.SentenceEncoder's (mean of the real tokens' last
hidden states, L2-normalised, inputs truncated to sentence-transformers' max_seq_length), without
loading the model on every request.
"""

from __future__ import annotations

import base64
import threading

import torch

from fastx.pipelines.sentence_embeddings import SentenceEncoder


class Embedder(SentenceEncoder):
    """A SentenceEncoder that requests from several threads take turns on (one batch at a time)."""

    def __init__(self, model: str, device: str | torch.device | None = None):
        super().__init__(model, device)
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        with self._lock:
            return super().embed(texts)


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's two encodings: a JSON list of floats, or base64 of the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.to(torch.float32).numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
