"""A resident sentence encoder for /v1/embeddings: loaded once, used from a worker thread.

The vectors are fastx.pipelines.sentence_embeddings.embed_texts' (mean of the real tokens' last
hidden states, L2-normalised, inputs truncated to sentence-transformers' max_seq_length), without
loading the model on every request.
"""

from __future__ import annotations

import base64
import threading

import torch

from fastx.pipelines.sentence_embeddings import BATCH_SIZE, embedding_max_length


class Embedder:
    def __init__(self, model: str, device: str | torch.device | None = None):
        from fastx.models import AutoModel
        from fastx.processing import AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.encoder = AutoModel.from_pretrained(model, device=self.device, dtype=torch.float32)
        self.max_length = embedding_max_length(model, self.encoder.config)
        self._lock = threading.Lock()  # one batch at a time: requests from several threads take turns

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        """(len(texts), E) float32 on the CPU, and the number of tokens the encoder read."""
        chunks, num_tokens = [], 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = texts[start : start + BATCH_SIZE]
                enc = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                )
                enc = enc.to(self.device)
                mask = enc["attention_mask"]
                out = self.encoder(enc["input_ids"], mask, enc.get("token_type_ids")).last_hidden_state
                weights = mask.unsqueeze(-1).to(out.dtype)  # (B, L, 1)
                pooled = (out * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=1))
                num_tokens += int(mask.sum())
        return torch.cat(chunks).cpu(), num_tokens


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's two encodings: a JSON list of floats, or base64 of the little-endian float32 bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.to(torch.float32).numpy().astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
