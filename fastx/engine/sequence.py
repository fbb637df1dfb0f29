"""A sequence being generated: its tokens, its KV blocks, where it stands."""

from __future__ import annotations

import enum
import itertools

import torch

from fastx.engine.sampling_params import SamplingParams

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One sample of one request. The n samples of a request are n Sequences sharing prompt blocks."""

    def __init__(self, request_id: int, sample_index: int, prompt_token_ids: list[int], params: SamplingParams,
                 arrival: int, generator: torch.Generator | None):  # fmt: skip
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.sample_index = sample_index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.arrival = arrival  # admission order: preemption picks the latest, scheduling the earliest
        self.generator = generator  # per-request seed: same samples whatever the batch or preemption
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # content hash of each full block of token_ids, a prefix chain
        self.num_computed_tokens = 0  # tokens whose K/V sit in the cache
        self.num_cached_tokens = 0  # of those, found in the prefix cache at allocation
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.logprobs: list[dict[int, float]] = []
        self.output_text = ""

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_uncomputed_tokens(self) -> int:
        """Tokens still lacking K/V: the whole prompt at first, then 1 per decode step."""
        return len(self.token_ids) - self.num_computed_tokens

    def block_token_ids(self, index: int, block_size: int) -> list[int]:
        return self.token_ids[index * block_size : (index + 1) * block_size]
