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


def embed_texts(model: str, texts: list[str], device: str | torch.device | None = None) -> torch.Tensor:
    """Sentence embeddings (len(texts), E): the mean of the real tokens' last hidden states, L2-normalised.

    fp32 on every device; the result is on the CPU.
    """
    from fastx.models import AutoModel
    from fastx.processing import AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model)
    encoder = AutoModel.from_pretrained(model, device=device, dtype=torch.float32)
    max_length = embedding_max_length(model, encoder.config)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), BATCH_SIZE):
            batch = texts[start : start + BATCH_SIZE]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            hidden = encoder(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=1))
    return torch.cat(chunks).cpu()
