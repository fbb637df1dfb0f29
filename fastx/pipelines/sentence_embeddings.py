"""Sentence embeddings as sentence-transformers computes them by default: mean pooling, then L2 norm."""

from __future__ import annotations

import torch

from fastx.checkpoints.hub import read_json, resolve_checkpoint

BATCH_SIZE = 32


def embedding_max_length(model: str, config) -> int:
    """sentence-transformers' max_seq_length when the checkpoint has one, else 256 within the model's limit."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    try:
        path = resolve_checkpoint(model, local_files_only=True) / "sentence_bert_config.json"
        value = read_json(path).get("max_seq_length") if path.is_file() else None
    except (OSError, ValueError):
        value = None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, limit)
    return min(256, limit)


class SentenceEncoder:
    """An encoder and its tokenizer loaded once; `embed` gives sentence-transformers' default vectors."""

    def __init__(self, model: str, device: str | torch.device | None = None):
        from fastx.models import AutoModel
        from fastx.processing import AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.encoder = AutoModel.from_pretrained(model, device=self.device, dtype=torch.float32)
        self.max_length = embedding_max_length(model, self.encoder.config)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> tuple[torch.Tensor, int]:
        """(len(texts), E) float32 on the CPU: the mean of the real tokens' last hidden states,
        L2-normalised; and the number of tokens the encoder read (inputs truncated to max_length)."""
        chunks, num_tokens = [], 0
        for start in range(0, len(texts), BATCH_SIZE):
            batch = texts[start : start + BATCH_SIZE]
            enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            enc = enc.to(self.device)
            mask = enc["attention_mask"]
            hidden = self.encoder(enc["input_ids"], mask, enc.get("token_type_ids")).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=1))
            num_tokens += int(mask.sum())
        return torch.cat(chunks).cpu(), num_tokens


def embed_texts(model: str, texts: list[str], device: str | torch.device | None = None) -> torch.Tensor:
    """Sentence embeddings (len(texts), E) of a model loaded for this call (see SentenceEncoder.embed)."""
    return SentenceEncoder(model, device).embed(texts)[0]
