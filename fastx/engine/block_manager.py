"""Paged KV blocks: free list, per-sequence block tables, reference counts, prefix caching.

A block holds `block_size` consecutive tokens of one sequence's K/V. Blocks are shared by
reference count: between the n samples of one prompt (fork) and, with prefix caching, between
any sequences whose token prefixes agree. A full block is identified by sha256(parent block's
hash, its token ids): a collision-safe content address (Python's hash() is neither stable
nor collision-safe). Freed blocks keep their hash and go to the back of the free list, so a
later prompt with the same prefix can revive them; allocation takes from the front, i.e. the
least recently freed block is reused first (LRU eviction of cached prefixes).
Writing into a shared block first copies it (copy-on-write); the copies are returned to the
caller (the runner), which performs them on the KV tensors before the step runs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from fastx.engine.sequence import Sequence


def block_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    h = hashlib.sha256(parent or b"root")
    h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in token_ids))
    return h.digest()


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None  # set once the block is full and its content is final


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        # Built from a validated EngineConfig (or by tests): an assertion, not a user-facing check.
        assert num_blocks >= 1 and block_size >= 1, (num_blocks, block_size)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # front = LRU
        self.cached: dict[bytes, int] = {}  # content hash -> block id (free or in use)
        self.num_prefix_hits = 0  # tokens served from the prefix cache (for tests and stats)
        self._published: list[Block] = []  # blocks published since the current step was scheduled

    # -- accounting ---------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- allocation of a sequence's whole context ------------------------------------------------
    def _hash_chain(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Content hashes of the sequence's first `num_blocks` full blocks.

        Tokens are only ever appended, so the chain is kept on the sequence and extended: each
        block is hashed once in the sequence's life, not once per step.
        """
        chain = seq.block_hashes
        for index in range(len(chain), num_blocks):
            chain.append(block_hash(chain[-1] if chain else None, seq.block_token_ids(index, self.block_size)))
        return chain[:num_blocks]

    def _cache_hits(self, seq: Sequence) -> list[int]:
        """Block ids of the longest cached prefix; at least one token is always left to compute."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        for content in self._hash_chain(seq, (len(seq) - 1) // self.block_size):
            block_id = self.cached.get(content)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._cache_hits(seq)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)  # hits sitting in the free list
        fresh = self.blocks_needed(len(seq)) - len(hits)
        return fresh + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> int:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks.

        Returns how many leading tokens the cached blocks already hold. The caller (the scheduler,
        the one writer of a sequence's progress) records them as computed.
        """
        assert not seq.block_table, "sequence already holds blocks"
        hits = self._cache_hits(seq)
        for block_id in hits:
            seq.block_table.append(self._acquire(block_id))
        for _ in range(self.blocks_needed(len(seq)) - len(hits)):
            seq.block_table.append(self._allocate_fresh())
        cached = len(hits) * self.block_size
        self.num_prefix_hits += cached
        return cached

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """The child shares every block of the parent (n samples of one prompt)."""
        assert not child.block_table
        for block_id in parent.block_table:
            self.blocks[block_id].ref_count += 1
        child.block_table = list(parent.block_table)

    def free_sequence(self, seq: Sequence) -> None:
        """Release a finished, aborted or preempted sequence's blocks (tail first, so prefixes stay longest).

        The sequence's progress is the scheduler's to reset: its K/V is gone once the blocks are.
        """
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                if block.hash is None or not self.enable_prefix_caching:
                    self.free[block_id] = None
                    self.free.move_to_end(block_id, last=False)  # contentless: reuse first
                else:
                    self.free[block_id] = None  # cached content: evicted only after older entries
        seq.block_table = []

    # -- growth by one token per decode step -------------------------------------------------------
    def slot_needs(self, seq: Sequence) -> int:
        """Free blocks needed before the token at position len(seq) - 1 can be written: 0 or 1."""
        position = len(seq) - 1
        index = position // self.block_size
        if index >= len(seq.block_table):
            return 1
        return 1 if self.blocks[seq.block_table[index]].ref_count > 1 else 0

    def prepare_slot(self, seq: Sequence) -> list[tuple[int, int]]:
        """Make the block for position len(seq) - 1 exist and be exclusively owned.

        Returns the (source, destination) block copies the runner must perform first.
        """
        position = len(seq) - 1
        index = position // self.block_size
        if index >= len(seq.block_table):
            assert index == len(seq.block_table), "a sequence grows one block at a time"
            seq.block_table.append(self._allocate_fresh())
            return []
        block = self.blocks[seq.block_table[index]]
        if block.ref_count == 1:
            if block.hash is not None:  # about to change: no longer the cached content
                self._forget(block)
            return []
        new_id = self._allocate_fresh()
        block.ref_count -= 1
        seq.block_table[index] = new_id
        return [(block.block_id, new_id)]

    def register_full_blocks(self, seq: Sequence, num_tokens: int) -> None:
        """Publish the blocks that are full once the sequence's first `num_tokens` tokens have K/V.

        The scheduler calls this when it schedules those tokens, before the step runs (as vLLM
        does), so a prompt admitted later in the same step already shares them: within each
        layer the step writes every new token's K/V to the cache before any attention reads it.
        """
        if not self.enable_prefix_caching:
            return
        for index, content in enumerate(self._hash_chain(seq, num_tokens // self.block_size)):
            block = self.blocks[seq.block_table[index]]
            if block.hash is None:
                if content in self.cached:
                    continue  # the same content lives in another block already
                block.hash = content
                self.cached[content] = block.block_id
                self._published.append(block)
            elif block.hash != content:
                break  # not this sequence's content (cannot happen for owned blocks)

    def begin_step(self) -> None:
        self._published.clear()

    def withdraw_step(self) -> None:
        """The step failed before its K/V was written: unpublish the blocks it published."""
        for block in self._published:
            if block.hash is not None:
                self._forget(block)
        self._published.clear()

    def reset_prefix_cache(self) -> int:
        """Forget the content of every free cached block (vLLM's reset_prefix_cache); returns how many.

        Blocks held by running sequences keep their hashes: their content is live.
        """
        dropped = [self.blocks[block_id] for block_id in self.free if self.blocks[block_id].hash is not None]
        for block in dropped:
            self._forget(block)
        return len(dropped)

    # -- internals -------------------------------------------------------------------------------
    def _allocate_fresh(self) -> int:
        """Take the least recently freed block for new content (its old cached content is dropped)."""
        if not self.free:
            raise RuntimeError("no free KV block (the scheduler must check before allocating)")
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            self._forget(block)
        block.ref_count = 1
        return block_id

    def _acquire(self, block_id: int) -> int:
        """Share a block with cached content, reviving it from the free list if needed."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1
        return block_id

    def _forget(self, block: Block) -> None:
        if self.cached.get(block.hash) == block.block_id:
            del self.cached[block.hash]
        block.hash = None
