"""Continuous batching: which sequences compute which tokens this step, and what the step changed.

One step holds decodes and prefill chunks together under one token budget (vLLM V1's
scheduler), so a long prompt arriving never stalls the running streams:
- decodes first: every running sequence whose prompt is computed takes its one new token, in
  admission order, while the budget lasts. When a sequence needs a block and none is free, the
  most recently admitted running sequence is preempted: its blocks are freed and it goes back
  to the front of the waiting queue, to be recomputed (prompt and the tokens generated so far)
  when blocks free up. The oldest sequence is never preempted for a younger one, so the engine
  always makes progress;
- then prefill with what is left of the budget: sequences part-way through a prompt continue,
  then waiting sequences are admitted first come first served while the budget, the sequence
  limit and the free blocks allow; a prompt longer than the remaining budget is computed in
  chunks over several steps (chunked prefill).
A step of decodes only is a decode step (the runner's fixed-shape, graph-captured path); one
with any prefill chunk runs through the prefill attention, decode rows included.

A step is a transaction kept here: `schedule` opens it, then either `postprocess` commits it (the
only place a sequence's progress moves after a step) or `abort_step` rolls it back.
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
    # (sample 0, the request's other samples): they fork at sample 0's first token and draw from its logits
    forks: list[tuple[Sequence, list[Sequence]]] = field(default_factory=list)
    # Decided once, here, from the progress before the step; the runner and postprocess both read it.
    sampled: list[Sequence] = field(init=False)  # sequences whose step reaches their last token
    sample_rows: list[int] = field(init=False)  # each one's row in the step's packed tokens (T)

    def __post_init__(self) -> None:
        self.sampled, self.sample_rows = [], []
        end = 0
        for seq, n in zip(self.seqs, self.num_tokens):
            end += n
            if seq.num_computed_tokens + n == len(seq):
                self.sampled.append(seq)
                self.sample_rows.append(end - 1)

    @property
    def draws(self) -> list[Sequence]:
        """Who draws a token from each row of the step's logits: `sampled`, then the fork children."""
        return self.sampled + [child for _, children in self.forks for child in children]

    @property
    def draw_rows(self) -> list[int]:
        """For each of `draws`, its row among `sampled`'s logits (a child reads its parent's)."""
        own = list(range(len(self.sampled)))
        return own + [self.sampled.index(parent) for parent, children in self.forks for _ in children]


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        *,
        eos_token_ids: set[int],
        max_model_len: int,
    ):
        # Built by the Engine from a validated EngineConfig: an assertion, not a user-facing check.
        assert max_num_seqs >= 1 and max_num_batched_tokens >= 1, (max_num_seqs, max_num_batched_tokens)
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self._forks: dict[int, list[Sequence]] = {}  # seq_id of a sample 0 -> the samples still to fork from it
        self.num_preemptions = 0

    def add(self, seq: Sequence, forks: list[Sequence] | None = None) -> None:
        """Queue a sequence; `forks` (the request's other samples) wait to share its prompt's K/V."""
        self.waiting.append(seq)
        if forks:
            self._forks[seq.seq_id] = list(forks)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step ------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        self.blocks.begin_step()
        budget = self.max_num_batched_tokens
        decodes, copies = self._schedule_decodes(budget)
        prefills, counts = self._schedule_prefills(budget - len(decodes))
        if not decodes and not prefills:
            return None
        batch = ScheduledBatch(
            decodes + prefills, [1] * len(decodes) + counts, is_decode=not prefills, block_copies=copies
        )
        batch.forks = [(s, self._forks[s.seq_id]) for s in batch.sampled if s.seq_id in self._forks]
        return batch

    def _schedule_decodes(self, budget: int) -> tuple[list[Sequence], list[tuple[int, int]]]:
        copies: list[tuple[int, int]] = []
        scheduled: list[Sequence] = []
        for seq in list(self.running):
            if len(scheduled) == budget:
                break
            if seq not in self.running or seq.num_uncomputed_tokens != 1:
                continue  # preempted below for an older sequence, or still in its prompt
            while self.blocks.slot_needs(seq) > self.blocks.num_free_blocks:
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                copies += self.blocks.prepare_slot(seq)
                self.blocks.register_full_blocks(seq, seq.num_computed_tokens + 1)
                scheduled.append(seq)
        return scheduled, copies

    def _schedule_prefills(self, budget: int) -> tuple[list[Sequence], list[int]]:
        seqs, counts = [], []
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
            seq.num_cached_tokens = seq.num_computed_tokens = self.blocks.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed_tokens, budget)
            # Published now, so the prompts admitted after this one in the same step share them.
            self.blocks.register_full_blocks(seq, seq.num_computed_tokens + n)
            seqs.append(seq)
            counts.append(n)
            budget -= n
        return seqs, counts

    def abort_step(self, batch: ScheduledBatch) -> None:
        """The step failed, its K/V maybe partly written: roll back what `schedule` did.

        The blocks it published are unpublished and its sequences go back to wait for a full
        recompute (oldest first in the queue), so no later step reads K/V that was never written.
        Samples waiting to fork stay pending: the rerun of sample 0 forks them.
        """
        self.blocks.withdraw_step()
        for seq in sorted(batch.seqs, key=lambda s: s.arrival, reverse=True):
            if seq in self.running:
                self._preempt(seq)

    def _preempt(self, seq: Sequence) -> None:
        """Recompute later: free the blocks, keep the tokens, requeue at the front."""
        self.running.remove(seq)
        self._release(seq)
        seq.num_cached_tokens = 0  # found anew when it is admitted again
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _release(self, seq: Sequence) -> None:
        self.blocks.free_sequence(seq)
        seq.num_computed_tokens = 0  # the K/V went with the blocks

    # -- after the step ------------------------------------------------------------------------
    def postprocess(
        self, batch: ScheduledBatch, token_ids: list[int], logprobs: list[dict[int, float] | None]
    ) -> list[Sequence]:
        """Commit a step that ran: the one writer of sequence progress after a step.

        `token_ids` and `logprobs` hold one entry per `batch.draws`. Every scheduled sequence's
        tokens now have K/V; samples waiting on a sample 0 that reached its first token fork from
        it (before any stop check can free its blocks); each drawn token is appended and checked.
        Returns the sequences that drew a token (some of them now finished).
        """
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed_tokens += n
        for parent, children in batch.forks:
            self._fork(parent, children)
        draws = batch.draws
        for seq, token, entry in zip(draws, token_ids, logprobs):
            self._accept(seq, token, entry)
        return draws

    def _fork(self, parent: Sequence, children: list[Sequence]) -> None:
        """The other samples share every block of sample 0's prompt; each then writes its own tail."""
        del self._forks[parent.seq_id]
        for child in children:
            self.blocks.fork(parent, child)
            child.num_computed_tokens = parent.num_computed_tokens  # the whole prompt, as the parent's
            child.num_cached_tokens = parent.num_cached_tokens
            child.status = SequenceStatus.RUNNING
        at = self.running.index(parent) + 1  # beside the parent: admitted with it, preempted after it
        self.running[at:at] = children

    def _accept(self, seq: Sequence, token: int, logprobs: dict[int, float] | None) -> None:
        seq.token_ids.append(token)
        if logprobs is not None:
            seq.logprobs.append(logprobs)
        if seq.detokenizer is not None:
            seq.output_text += seq.detokenizer.add(token)
        reason = self._stop_reason(seq, token)
        if reason is not None:
            if seq.detokenizer is not None and not isinstance(seq.stop_reason, str):
                seq.output_text += seq.detokenizer.flush()  # text held back for an unfinished character
            self.finish(seq, reason)

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        """Why `token` ends the sequence, if it does; a stop string also trims the text."""
        p = seq.params
        if token in p.stop_token_ids:
            seq.stop_reason = token
            return "stop"
        if not p.ignore_eos and token in self.eos_token_ids:
            return "stop"
        if p.stop_strings and seq.num_output_tokens >= p.min_tokens:
            for stop in p.stop_strings:
                at = seq.output_text.find(stop)
                if at >= 0:
                    seq.output_text = seq.output_text[: at + (len(stop) if p.include_stop_str_in_output else 0)]
                    seq.stop_reason = stop
                    return "stop"
        if (p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens) or len(seq) >= self.max_model_len:
            return "length"
        return None

    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire a sequence at once (stop, length or abort) and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_table:
            self._release(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.detokenizer = None  # no more tokens to turn into text
        # A sample 0 that ends before its first token leaves no prompt K/V to fork from.
        for child in self._forks.pop(seq.seq_id, []):
            if reason == "abort":
                self.finish(child, reason)
            else:
                self.add(child)  # each prefills on its own

    def finish_oldest_waiting(self) -> list[Sequence]:
        """Nothing could be scheduled: the oldest waiting sequence has outgrown the whole cache; end it."""
        if not self.waiting:
            return []
        seq = self.waiting[0]
        self.finish(seq, "length")
        return [seq]
