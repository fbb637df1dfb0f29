"""Logits -> next tokens for a batch of sequences, vectorised over the batch.

Order of processing (vLLM's): penalties (repetition over prompt and output, presence and
frequency over output), min_tokens (EOS and stop ids masked until reached), temperature,
top-k, top-p, min-p, then a greedy argmax or a sample. Sampling uses the exponential-race
trick, argmax(p / E) with E ~ Exp(1), which draws from p exactly; each row's noise comes from
its own torch.Generator when the request has a seed, so its samples do not depend on what else
is in the batch. Logprobs, when asked, are those of the model's raw distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastx.engine.sequence import Sequence


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per row: {token: logprob} (the chosen + top-k), or None


def _penalise(logits: torch.Tensor, seqs: list[Sequence], vocab: int) -> None:
    for row, seq in enumerate(seqs):  # rows without penalties are skipped, the rest is vectorised per row
        p = seq.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long, device=logits.device)
            seen = seen[seen < vocab]
            values = logits[row, seen]
            logits[row, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if p.presence_penalty or p.frequency_penalty:
            out = seq.output_token_ids
            if out:
                ids, counts = torch.tensor(out, device=logits.device).unique(return_counts=True)
                keep = ids < vocab
                ids, counts = ids[keep], counts[keep]
                logits[row, ids] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty


def _mask_until_min_tokens(logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: set[int]) -> None:
    for row, seq in enumerate(seqs):
        if seq.num_output_tokens < seq.params.min_tokens:
            banned = set(seq.params.stop_token_ids) | (set() if seq.params.ignore_eos else eos_token_ids)
            banned = [t for t in banned if t < logits.shape[1]]
            if banned:
                logits[row, banned] = float("-inf")


def sample(
    logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: set[int], generator: torch.Generator
) -> SampleResult:
    """logits (N, V) for the N sequences -> one token each."""
    logits = logits.float()
    vocab = logits.shape[1]
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(s.params.logprobs is not None for s in seqs) else None
    logits = logits.clone()
    _penalise(logits, seqs, vocab)
    _mask_until_min_tokens(logits, seqs, eos_token_ids)

    greedy_rows = torch.tensor([s.params.greedy for s in seqs], device=logits.device)
    chosen = logits.argmax(dim=-1)
    if not bool(greedy_rows.all()):
        temperature = torch.tensor([s.params.temperature or 1.0 for s in seqs], device=logits.device)
        scaled = logits / temperature[:, None]
        top_k = torch.tensor([s.params.top_k if s.params.top_k > 0 else vocab for s in seqs], device=logits.device)
        top_p = torch.tensor([s.params.top_p for s in seqs], device=logits.device)
        min_p = torch.tensor([s.params.min_p for s in seqs], device=logits.device)
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        drop = ranks >= top_k.clamp(max=vocab)[:, None]
        probs_sorted = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
        # top-p keeps the smallest prefix whose mass reaches p (the first token always stays)
        mass_before = probs_sorted.cumsum(dim=-1) - probs_sorted
        drop |= mass_before >= top_p[:, None]
        drop |= probs_sorted < min_p[:, None] * probs_sorted[:, :1]
        drop[:, 0] = False
        filtered = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, filtered)
        probs = scaled.softmax(dim=-1)
        noise = torch.empty_like(probs)
        for row, seq in enumerate(seqs):
            noise[row].exponential_(generator=seq.generator or generator)
        sampled = (probs / noise).argmax(dim=-1)
        chosen = torch.where(greedy_rows, chosen, sampled)

    tokens = chosen.tolist()
    logprobs: list[dict[int, float] | None] = [None] * len(seqs)
    if raw_logprobs is not None:
        for row, seq in enumerate(seqs):
            k = seq.params.logprobs
            if k is None:
                continue
            entry = {tokens[row]: raw_logprobs[row, tokens[row]].item()}
            if k > 0:
                values, ids = raw_logprobs[row].topk(k)
                entry.update(zip(ids.tolist(), values.tolist()))
            logprobs[row] = entry
    return SampleResult(tokens, logprobs)
