"""Continuous batching: which sequences compute which tokens this step.

Each step is either a prefill step or a decode step (prefill first, as vLLM's default):
- prefill: waiting sequences are admitted first come first served while the token budget,
  the sequence budget and the free blocks allow; a prompt longer than the remaining budget is
  computed in chunks over several steps (chunked prefill);
- decode: every running sequence computes its one new token. When a sequence needs a block
  and none is free, the most recently admitted running sequence is preempted: its blocks are
  freed and it goes back to the front of the waiting queue, to be recomputed (prompt and the
  tokens generated so far) when blocks free up. The oldest sequence is never preempted for a
  younger one, so the engine always makes progress.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastx.engine.block_manager import BlockManager
from fastx.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class ScheduledBatch:
    seqs: list[Sequence]
    num_tokens: list[int]  # tokens each sequence computes this step, from its num_computed_tokens
    is_decode: bool
    block_copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write, before the step


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        if max_num_seqs < 1:
            raise ValueError(f"max_num_seqs: expected at least 1, got {max_num_seqs}")
        if max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens: expected at least 1, got {max_num_batched_tokens}")
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        self.blocks.begin_step()
        prefill = self._schedule_prefill()
        if prefill is not None:
            return prefill
        return self._schedule_decode()

    def _schedule_prefill(self) -> ScheduledBatch | None:
        seqs, counts, budget = [], [], self.max_num_batched_tokens
        # Sequences part-way through a chunked prefill continue first.
        for seq in self.running:
            if budget and seq.num_uncomputed_tokens > 1:
                n = min(seq.num_uncomputed_tokens, budget)
                self.blocks.register_full_blocks(seq, seq.num_computed_tokens + n)
                seqs.append(seq)
                counts.append(n)
                budget -= n
        while self.waiting and budget and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq):
                break
            self.waiting.popleft()
            self.blocks.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            # Published now, so the prompts admitted after this one in the same step share them.
            self.blocks.register_full_blocks(seq, seq.num_computed_tokens + n)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        if not seqs:
            return None
        return ScheduledBatch(seqs, counts, is_decode=False)

    def _schedule_decode(self) -> ScheduledBatch | None:
        copies: list[tuple[int, int]] = []
        scheduled: list[Sequence] = []
        for seq in list(self.running):
            if seq not in self.running:
                continue  # preempted below for an older sequence
            while self.blocks.slot_needs(seq) > self.blocks.num_free_blocks:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                copies += self.blocks.prepare_slot(seq)
                self.blocks.register_full_blocks(seq, seq.num_computed_tokens + 1)
                scheduled.append(seq)
        if not scheduled:
            return None
        return ScheduledBatch(scheduled, [1] * len(scheduled), is_decode=True, block_copies=copies)

    def requeue(self, seqs: list[Sequence]) -> None:
        """Send running sequences back to wait for a full recompute, oldest first in the queue."""
        for seq in sorted(seqs, key=lambda s: s.arrival, reverse=True):
            if seq in self.running:
                self._preempt(seq)

    def _preempt(self, seq: Sequence) -> None:
        """Recompute later: free the blocks, keep the tokens, requeue at the front."""
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # -- after the step ------------------------------------------------------------------------
    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire a sequence at once (stop, length or abort) and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_table:
            self.blocks.free_sequence(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
