"""Block manager: prefix sharing, copy-on-write, LRU reuse, and hypothesis-checked invariants."""

from collections import Counter

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fastx.engine.block_manager import BlockManager, block_hash
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.sequence import Sequence


def _seq(tokens, request_id=0):
    return Sequence(request_id, 0, tokens, SamplingParams(), 0, None)


def _compute_all(bm, seq):
    """What the scheduler's postprocess records after a prefill: every token now has K/V."""
    seq.num_computed_tokens = len(seq)
    bm.register_full_blocks(seq, len(seq))


def test_prefix_blocks_are_shared_and_one_token_is_always_recomputed():
    bm = BlockManager(num_blocks=10, block_size=4)
    a = _seq(list(range(10)))
    bm.allocate(a)
    _compute_all(bm, a)
    b = _seq(list(range(8)) + [99, 98])  # shares two full blocks
    assert bm.allocate(b) == 8  # tokens the cached blocks already hold
    assert b.block_table[:2] == a.block_table[:2]
    c = _seq(list(range(8)))  # prompt of exactly two blocks: the last block is recomputed
    assert bm.allocate(c) == 4 and c.block_table[0] == a.block_table[0]
    assert bm.blocks[a.block_table[0]].ref_count == 3


def test_freed_cached_blocks_are_revived_and_evicted_least_recently_used_first():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = _seq([1, 2, 3, 4, 5])
    bm.allocate(a)
    _compute_all(bm, a)
    first_blocks = list(a.block_table)
    bm.free_sequence(a)
    assert bm.num_free_blocks == 4
    again = _seq([1, 2, 3, 4, 7])
    assert bm.allocate(again) == 4
    assert again.block_table[:2] == first_blocks[:2]
    bm.free_sequence(again)
    other = _seq([9] * 8)  # needs all 4 blocks: evicts the cached prefix
    bm.allocate(other)
    assert not bm.cached or all(bm.blocks[b].hash == h for h, b in bm.cached.items())


def test_reset_prefix_cache_forgets_free_blocks_and_keeps_live_ones():
    bm = BlockManager(num_blocks=8, block_size=2)
    done, live = _seq([1, 2, 3, 4, 5]), _seq([7, 8, 9, 10, 11])
    for seq in (done, live):
        bm.allocate(seq)
        _compute_all(bm, seq)
    bm.free_sequence(done)
    assert bm.reset_prefix_cache() == 2  # done's two full blocks
    again = _seq([1, 2, 3, 4, 6])
    assert bm.allocate(again) == 0  # computed anew
    shared = _seq([7, 8, 9, 10, 0])
    assert bm.allocate(shared) == 4  # the running sequence's blocks are still shared


def test_fork_then_append_copies_the_shared_partial_block():
    bm = BlockManager(num_blocks=6, block_size=4)
    parent = _seq([1, 2, 3, 4, 5, 6])
    bm.allocate(parent)
    _compute_all(bm, parent)
    child = _seq(list(parent.token_ids))
    bm.fork(parent, child)
    for s in (parent, child):
        s.token_ids.append(7)
        s.num_computed_tokens = len(s) - 1
    assert bm.slot_needs(parent) == 1  # the partial block is shared: it must be copied first
    copies = bm.prepare_slot(parent)
    assert copies == [(child.block_table[1], parent.block_table[1])]
    assert bm.prepare_slot(child) == []  # now exclusively owned by the child
    assert parent.block_table[0] == child.block_table[0]


def test_hash_is_content_addressed_and_chained():
    assert block_hash(None, [1, 2]) == block_hash(None, [1, 2])
    assert block_hash(None, [1, 2]) != block_hash(block_hash(None, [0]), [1, 2])
    assert block_hash(None, [1, 2]) != block_hash(None, [2, 1])


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate / append / fork / free / preempt keep every accounting invariant."""

    def __init__(self):
        super().__init__()
        self.bm = BlockManager(num_blocks=12, block_size=4)
        self.live: list[Sequence] = []

    @rule(tokens=st.lists(st.integers(0, 3), min_size=1, max_size=20))
    def allocate(self, tokens):
        seq = _seq(tokens)
        if self.bm.can_allocate(seq):
            cached = self.bm.allocate(seq)
            assert cached % self.bm.block_size == 0 and cached < len(seq)  # one token is always computed
            _compute_all(self.bm, seq)
            seq.num_computed_tokens = len(seq) - 1 if len(seq) else 0
            self.live.append(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), token=st.integers(0, 3))
    def append(self, data, token):
        seq = data.draw(st.sampled_from(self.live))
        seq.token_ids.append(token)
        if self.bm.slot_needs(seq) > self.bm.num_free_blocks:
            seq.token_ids.pop()
            return
        self.bm.prepare_slot(seq)
        seq.num_computed_tokens = len(seq) - 1
        self.bm.register_full_blocks(seq, seq.num_computed_tokens)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(self.live))
        child = _seq(list(parent.token_ids))
        self.bm.fork(parent, child)
        child.num_computed_tokens = parent.num_computed_tokens  # as the scheduler records a fork
        self.live.append(child)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free_or_preempt(self, data):
        seq = data.draw(st.sampled_from(self.live))
        self.live.remove(seq)
        self.bm.free_sequence(seq)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def publish_then_withdraw(self, data):
        """A step publishes a sequence's full blocks when scheduled, then fails before running."""
        seq = data.draw(st.sampled_from(self.live))
        before = dict(self.bm.cached)
        self.bm.begin_step()
        self.bm.register_full_blocks(seq, len(seq))
        self.bm.withdraw_step()
        assert self.bm.cached == before

    @invariant()
    def every_block_is_free_or_referenced_never_both(self):
        for block in self.bm.blocks:
            assert (block.block_id in self.bm.free) == (block.ref_count == 0)

    @invariant()
    def reference_counts_equal_the_tables_holding_the_block(self):
        held = Counter(b for s in self.live for b in s.block_table)
        for block in self.bm.blocks:
            assert block.ref_count == held[block.block_id]

    @invariant()
    def capacity_is_conserved_and_cache_index_is_consistent(self):
        in_use = sum(1 for b in self.bm.blocks if b.ref_count > 0)
        assert in_use + self.bm.num_free_blocks == self.bm.num_blocks
        for h, block_id in self.bm.cached.items():
            assert self.bm.blocks[block_id].hash == h

    @invariant()
    def tables_cover_every_computed_token(self):
        for s in self.live:
            assert len(s.block_table) * self.bm.block_size >= s.num_computed_tokens


TestBlockManagerStateful = BlockManagerMachine.TestCase
TestBlockManagerStateful.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
