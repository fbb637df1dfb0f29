"""transformers-style `model.generate(input_ids, ...)` served by the paged engine.

Returns what transformers returns: each row's input ids (padding included) followed by its new
tokens, rows that stopped early filled with pad_token_id, as wide as the longest row needs.
"""

from __future__ import annotations

import torch

from fastx.engine.engine import Engine, EngineConfig
from fastx.engine.sampling_params import SamplingParams, SamplingParamsError

DEFAULT_MAX_LENGTH = 20  # transformers' GenerationConfig.max_length


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float = 1.0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    max_length: int | None = None,
    repetition_penalty: float = 1.0,
    min_new_tokens: int = 0,
    seed: int | None = None,
    block_size: int = 16,
) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(
            f"input_ids: expected a tensor of token ids, shape (batch, length), got {type(input_ids).__name__} "
            "(as in transformers: torch.tensor(ids) or a tokenizer's return_tensors='pt')"
        )
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected shape (batch, length) with length >= 1, got {tuple(input_ids.shape)}")
    batch, length = input_ids.shape
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
    if max_new_tokens is None:
        max_new_tokens = max((max_length or DEFAULT_MAX_LENGTH) - length, 0)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an integer >= 0 (None: up to max_length), got {max_new_tokens!r}")
    if max_new_tokens == 0:
        return input_ids.clone()
    params = _sampling_params(
        temperature=temperature if do_sample else 0.0,
        top_k=(top_k or -1) if do_sample else -1,
        top_p=top_p if do_sample else 1.0,
        max_tokens=max_new_tokens,
        min_tokens=min_new_tokens,
        repetition_penalty=repetition_penalty,
        seed=seed,
        skip_special_tokens=False,
    )
    mask = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    prompts = [row[m].tolist() for row, m in zip(input_ids.cpu(), mask.cpu())]
    blocks = sum(-(-(len(p) + max_new_tokens) // block_size) for p in prompts)
    # Built as LLM builds it (eos ids, length and vocabulary read off the model); an explicit
    # eos_token_id replaces the model's, as in transformers.
    engine = Engine(
        model,
        EngineConfig(block_size=block_size, num_kv_blocks=max(blocks, 1), max_num_seqs=batch, seed=seed or 0),
        eos_token_ids=eos_token_id,
    )
    eos = engine.eos_token_ids
    if pad_token_id is None:
        pad_token_id = getattr(model.config, "pad_token_id", None)
        pad_token_id = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    ids = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished():
        engine.step()
    new = [engine.pop_request(i).seqs[0].output_token_ids for i in ids]
    width = max(len(t) for t in new)
    out = torch.full((batch, length + width), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    out[:, :length] = input_ids
    for row, tokens in enumerate(new):
        out[row, length : length + len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    return out


# SamplingParams' names for generate()'s arguments, so that an error names what the caller typed.
_ARGUMENT_NAMES = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}


def _sampling_params(**fields) -> SamplingParams:
    try:
        return SamplingParams(**fields)
    except SamplingParamsError as exc:
        raise ValueError(f"{_ARGUMENT_NAMES.get(exc.field, exc.field)}: {exc.reason}") from None
