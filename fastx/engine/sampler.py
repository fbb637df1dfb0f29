"""Logits -> next tokens for a batch of sequences, vectorised over the batch.

Order of processing (vLLM's): penalties (repetition over prompt and output, presence and
frequency over output), min_tokens (EOS and stop ids masked until reached), temperature,
top-k, top-p, min-p, then a greedy argmax or a sample. Logprobs, when asked, are those of the
model's raw distribution.

Every stage is a fixed number of batched tensor ops whatever the batch holds: no per-row
launches, and no value read back from the device until the one transfer of the results at the
end (on a GPU each read-back would stall the host until the GPU catches up).

Sampling uses the exponential race, argmax(p / E) with E ~ Exp(1), which draws from p exactly.
E comes from a counter-based hash of (the sequence's sample seed, its output token count, the
token id): a row's draws depend on nothing else, so a seeded request samples the same tokens
whatever else is in the batch and after a preemption, with no per-row generator to advance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from fastx.engine.sequence import Sequence

_MASK32 = 0xFFFFFFFF


@dataclass(slots=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per row: {token: logprob} (the chosen + top-k), or None


# -- counter-based uniform noise -----------------------------------------------------------------


def _mul32(x, c: int):
    """(x * c) mod 2**32 for x, c < 2**32, on ints or int64 tensors, never overflowing 63 bits."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def _fmix32(h):
    """MurmurHash3's finaliser: every input bit flips each output bit with probability ~1/2."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def row_key(sample_seed: int, step: int) -> int:
    """32-bit key of one draw: the sequence's seed (63 bits) and which of its tokens is drawn."""
    return _fmix32((sample_seed & _MASK32) ^ _fmix32(((sample_seed >> 32) & _MASK32) ^ _fmix32(step & _MASK32)))


@functools.lru_cache(maxsize=8)
def _token_hashes(vocab: int, device: torch.device) -> torch.Tensor:
    return _fmix32(_mul32(torch.arange(vocab, dtype=torch.long, device=device), 0x9E3779B1))


def exponential_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """(N,) int64 keys -> (N, V) fp32 Exp(1) draws, each a pure function of (key, token id)."""
    bits = _fmix32(keys[:, None] ^ _token_hashes(vocab, keys.device))  # (N, V) in [0, 2**32)
    uniform = ((bits >> 8).float() + 0.5) * (1.0 / (1 << 24))  # 24 bits, strictly inside (0, 1)
    return -torch.log(uniform)


# -- logits processing ---------------------------------------------------------------------------


def _padded_ids(lists: list[list[int]], vocab: int, device) -> torch.Tensor:
    """Rows of token ids padded (and out-of-vocabulary ids mapped) to `vocab`, a column dropped after."""
    width = max(1, max(len(ids) for ids in lists))
    table = torch.full((len(lists), width), vocab, dtype=torch.long)
    for row, ids in enumerate(lists):
        if ids:
            table[row, : len(ids)] = torch.tensor(ids, dtype=torch.long).clamp_(max=vocab)
    return table.to(device, non_blocking=True)


def _per_row(values: list[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).to(device, non_blocking=True)


def _penalise(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    rows, vocab = logits.shape
    params = [s.params for s in seqs]
    if any(p.repetition_penalty != 1.0 for p in params):
        ids = _padded_ids(
            [s.token_ids if s.params.repetition_penalty != 1.0 else [] for s in seqs], vocab, logits.device
        )
        seen = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=logits.device).scatter_(1, ids, True)[:, :vocab]
        penalty = _per_row([p.repetition_penalty for p in params], logits.device)[:, None]
        logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    if any(p.presence_penalty or p.frequency_penalty for p in params):
        wanted = [s.output_token_ids if s.params.presence_penalty or s.params.frequency_penalty else [] for s in seqs]
        ids = _padded_ids(wanted, vocab, logits.device)
        counts = torch.zeros(rows, vocab + 1, device=logits.device).scatter_add_(
            1, ids, torch.ones_like(ids, dtype=torch.float32)
        )
        counts = counts[:, :vocab]
        frequency = _per_row([p.frequency_penalty for p in params], logits.device)
        presence = _per_row([p.presence_penalty for p in params], logits.device)
        logits = logits - frequency[:, None] * counts - presence[:, None] * (counts > 0)
    return logits


def _mask_until_min_tokens(logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: set[int]) -> torch.Tensor:
    banned = []
    for seq in seqs:
        p = seq.params
        ids = set()
        if seq.num_output_tokens < p.min_tokens:
            ids = set(p.stop_token_ids) | (set() if p.ignore_eos else eos_token_ids)
        banned.append(sorted(ids))
    if not any(banned):
        return logits
    rows, vocab = logits.shape
    ids = _padded_ids(banned, vocab, logits.device)
    mask = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=logits.device).scatter_(1, ids, True)[:, :vocab]
    return logits.masked_fill(mask, float("-inf"))


def _sample_rows(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then the exponential race; (N,) token ids."""
    vocab = logits.shape[1]
    device = logits.device
    params = [s.params for s in seqs]
    # One host tensor of every row's settings, one copy to the device.
    settings = torch.tensor(
        [[p.temperature or 1.0, p.top_k if p.top_k > 0 else vocab, p.top_p, p.min_p] for p in params],
        dtype=torch.float32,
    ).to(device, non_blocking=True)
    temperature, top_k, top_p, min_p = settings.unbind(1)
    scaled = logits / temperature[:, None]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device)[None, :]
    drop = ranks >= top_k[:, None]
    probs_sorted = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # top-p keeps the smallest prefix whose mass reaches p (the first token always stays)
    mass_before = probs_sorted.cumsum(dim=-1) - probs_sorted
    drop |= mass_before >= top_p[:, None]
    drop |= probs_sorted < min_p[:, None] * probs_sorted[:, :1]
    drop[:, 0] = False
    filtered = sorted_logits.masked_fill(drop, float("-inf"))
    probs = torch.full_like(scaled, float("-inf")).scatter(1, order, filtered).softmax(dim=-1)
    keys = torch.tensor([row_key(s.sample_seed, s.num_output_tokens) for s in seqs], dtype=torch.long)
    noise = exponential_noise(keys.to(device, non_blocking=True), vocab)
    return (probs / noise).argmax(dim=-1)


def sample(logits: torch.Tensor, seqs: list[Sequence], eos_token_ids: set[int]) -> SampleResult:
    """logits (N, V) for the N sequences -> one token each."""
    logits = logits.float()
    wants_logprobs = [s.params.logprobs for s in seqs]
    raw_logprobs = torch.log_softmax(logits, dim=-1) if any(k is not None for k in wants_logprobs) else None
    logits = _penalise(logits, seqs)
    logits = _mask_until_min_tokens(logits, seqs, eos_token_ids)

    chosen = logits.argmax(dim=-1)
    greedy = [s.params.greedy for s in seqs]  # host-side flags: no device read to decide
    if not all(greedy):
        sampled = _sample_rows(logits, seqs)
        greedy_rows = torch.tensor(greedy).to(logits.device, non_blocking=True)
        chosen = torch.where(greedy_rows, chosen, sampled)

    if raw_logprobs is None:
        return SampleResult(chosen.tolist(), [None] * len(seqs))  # the step's one read-back
    # Chosen token, its logprob and the widest top-k any row asked for, in one read-back.
    width = max(k or 0 for k in wants_logprobs)
    top_values, top_ids = raw_logprobs.topk(width, dim=-1) if width else (raw_logprobs[:, :0], chosen[:, None][:, :0])
    packed = torch.cat(
        [
            chosen[:, None].double(),
            raw_logprobs.gather(1, chosen[:, None]).double(),
            top_ids.double(),
            top_values.double(),
        ],
        dim=1,
    ).tolist()
    tokens, logprobs = [], []
    for row, k in zip(packed, wants_logprobs):
        token = int(row[0])
        tokens.append(token)
        if k is None:
            logprobs.append(None)
            continue
        entry = {token: row[1]}
        entry.update(zip((int(t) for t in row[2 : 2 + k]), row[2 + width : 2 + width + k]))
        logprobs.append(entry)
    return SampleResult(tokens, logprobs)
