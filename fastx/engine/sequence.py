"""A sequence being generated: its tokens, its KV blocks, where it stands.

Who writes what, so each piece of state has one writer:
- the scheduler: status, num_computed_tokens, num_cached_tokens, token_ids (appends), logprobs,
  output_text, finish_reason, stop_reason (Scheduler.postprocess after each step; admission,
  preemption, fork and finish);
- the block manager: block_table and block_hashes (its view of where the K/V lives);
- the runner only reads.
"""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING

from fastx.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from fastx.processing.detokenizer import IncrementalDetokenizer

_ids = itertools.count()


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One sample of one request. The n samples of a request are n Sequences sharing prompt blocks."""

    def __init__(
        self,
        request_id: int,
        sample_index: int,
        prompt_token_ids: list[int],
        params: SamplingParams,
        arrival: int,
        sample_seed: int,
        detokenizer: IncrementalDetokenizer | None = None,
    ):
        self.seq_id = next(_ids)
        self.request_id = request_id
        self.sample_index = sample_index
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.arrival = arrival  # admission order: preemption picks the latest, scheduling the earliest
        # Keys this sample's random draws (with its token count): the same samples whatever the
        # batch or a preemption, and no per-row generator state to advance on the device.
        self.sample_seed = sample_seed
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # content hash of each full block of token_ids, a prefix chain
        self.num_computed_tokens = 0  # tokens whose K/V sit in the cache
        self.num_cached_tokens = 0  # of those, found in the prefix cache at allocation
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.logprobs: list[dict[int, float]] = []
        self.output_text = ""
        self.detokenizer = detokenizer  # this sample's text so far; None when the engine has no tokenizer

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
