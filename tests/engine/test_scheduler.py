"""Scheduler transactions without a model: schedule, then postprocess (commit) or abort_step (roll back)."""

import ast
from pathlib import Path

import pytest

from fastx.engine.block_manager import BlockManager
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.scheduler import Scheduler
from fastx.engine.sequence import Sequence, SequenceStatus

ENGINE = Path(__file__).resolve().parents[2] / "fastx" / "engine"


def _scheduler(num_blocks=16, block_size=4, budget=64, max_model_len=100, eos=frozenset({0})):
    bm = BlockManager(num_blocks, block_size)
    return Scheduler(bm, 8, budget, eos_token_ids=set(eos), max_model_len=max_model_len), bm


def _seq(tokens, arrival=0, index=0, **params):
    return Sequence(arrival, index, tokens, SamplingParams(**params), arrival, sample_seed=arrival)


def _progress(seqs):
    return [(s.num_computed_tokens, len(s), s.status) for s in seqs]


def test_schedule_decides_who_samples_and_only_postprocess_moves_progress():
    scheduler, _ = _scheduler(budget=10)
    long, short = _seq(list(range(1, 13)), 0), _seq([5, 6, 7], 1)
    scheduler.add(long)
    scheduler.add(short)
    batch = scheduler.schedule()
    assert batch.num_tokens == [10] and batch.sampled == []  # a chunk of the long prompt: nothing samples
    assert long.num_computed_tokens == 0  # scheduled, not yet computed
    assert scheduler.postprocess(batch, [], []) == []
    assert long.num_computed_tokens == 10 and len(long) == 12
    before = _progress([long])
    batch = scheduler.schedule()  # the rest of the long prompt, then the short one
    assert _progress([long]) == before  # scheduling a step changes no progress
    assert batch.seqs == [long, short] and batch.num_tokens == [2, 3]
    assert batch.sampled == [long, short] and batch.sample_rows == [1, 4]
    assert scheduler.postprocess(batch, [40, 50], [None, None]) == [long, short]
    assert [s.output_token_ids for s in (long, short)] == [[40], [50]]
    assert all(s.num_computed_tokens == len(s) - 1 for s in (long, short))  # the new token awaits its K/V
    batch = scheduler.schedule()
    assert batch.is_decode and batch.sampled == [long, short]


def test_a_long_prompt_arriving_mixes_with_the_running_decodes():
    """vLLM V1's budget: decodes first, the new prompt's chunks in what is left, every step."""
    scheduler, _ = _scheduler(num_blocks=32, budget=8)
    streams = [_seq([1, 2, 3], 0), _seq([4, 5], 1)]
    for seq in streams:
        scheduler.add(seq)
    batch = scheduler.schedule()
    scheduler.postprocess(batch, [7, 8], [None, None])
    long = _seq(list(range(10, 30)), 2)  # 20 tokens: three chunks of the 6 tokens the decodes leave
    scheduler.add(long)
    for step in range(4):
        batch = scheduler.schedule()
        expected_chunk = min(6, 20 - 6 * step)
        assert batch.seqs[:2] == streams and batch.num_tokens[:2] == [1, 1], step  # the streams never stall
        assert batch.seqs[2:] == [long] and batch.num_tokens[2:] == [expected_chunk]
        assert not batch.is_decode
        sampled = len(batch.sampled)
        scheduler.postprocess(batch, [9] * sampled, [None] * sampled)
    assert long.num_output_tokens == 1 and all(s.num_output_tokens == 5 for s in streams)
    batch = scheduler.schedule()
    assert batch.is_decode and batch.seqs == [*streams, long]


@pytest.mark.parametrize(
    "params, token, reason, stop_reason, max_model_len",
    [
        ({"stop_token_ids": [9]}, 9, "stop", 9, 100),
        ({}, 0, "stop", None, 100),  # eos
        ({"ignore_eos": True, "max_tokens": 5}, 0, None, None, 100),
        ({"max_tokens": 1}, 7, "length", None, 100),
        ({"max_tokens": None}, 7, "length", None, 5),  # the model's length: 4 prompt tokens + 1
    ],
)
def test_postprocess_runs_the_stop_checks_and_frees_finished_blocks(params, token, reason, stop_reason, max_model_len):
    scheduler, bm = _scheduler(max_model_len=max_model_len)
    seq = _seq([1, 2, 3, 4], **params)
    scheduler.add(seq)
    scheduler.postprocess(scheduler.schedule(), [token], [None])
    assert seq.finish_reason == reason and seq.stop_reason == stop_reason
    if reason is None:
        assert seq.status is SequenceStatus.RUNNING and scheduler.running == [seq]
    else:
        assert seq.is_finished and not scheduler.running and bm.num_free_blocks == bm.num_blocks
        assert seq.num_computed_tokens == 0 and not seq.block_table


def test_samples_fork_at_the_first_token_beside_their_parent_sharing_its_blocks():
    scheduler, bm = _scheduler()
    other = _seq([8, 8], 0)
    parent, child = _seq([1, 2, 3, 4, 5, 6], 1, 0, n=2), _seq([1, 2, 3, 4, 5, 6], 2, 1, n=2)
    scheduler.add(other)
    scheduler.add(parent, forks=[child])
    batch = scheduler.schedule()
    assert batch.forks == [(parent, [child])]
    assert batch.draws == [other, parent, child] and batch.draw_rows == [0, 1, 1]  # the child reads the parent's row
    scheduler.postprocess(batch, [3, 11, 12], [None] * 3)
    assert scheduler.running == [other, parent, child]
    assert child.block_table == parent.block_table and child.num_computed_tokens == parent.num_prompt_tokens
    assert child.output_token_ids == [12] and parent.output_token_ids == [11]
    assert bm.blocks[parent.block_table[0]].ref_count == 2
    assert scheduler.schedule().forks == []  # forked once


def test_abort_step_restores_the_state_before_the_step():
    scheduler, bm = _scheduler(budget=64)
    shared = list(range(10, 18))  # two full blocks of 4
    first, second = _seq(shared + [1], 0, n=2), _seq(shared + [2], 1)
    sibling = _seq(shared + [1], 2, 1, n=2)
    scheduler.add(first, forks=[sibling])
    scheduler.add(second)
    batch = scheduler.schedule()
    assert bm.cached and second.block_table[:2] == first.block_table[:2]  # shared within the step
    scheduler.abort_step(batch)
    assert not bm.cached and bm.num_free_blocks == bm.num_blocks
    assert list(scheduler.waiting) == [first, second] and not scheduler.running  # oldest first
    assert all(s.status is SequenceStatus.WAITING and s.num_computed_tokens == 0 for s in (first, second))
    assert all(not s.block_table and s.num_cached_tokens == 0 for s in (first, second))
    again = scheduler.schedule()  # the same step, with the sibling still waiting to fork
    assert again.seqs == [first, second] and again.num_tokens == batch.num_tokens
    assert again.forks == [(first, [sibling])]


def test_a_sample_0_that_ends_before_its_first_token_queues_its_siblings():
    scheduler, _ = _scheduler()
    parent, child = _seq([1, 2], 0, 0, n=2), _seq([1, 2], 1, 1, n=2)
    scheduler.add(parent, forks=[child])
    assert scheduler.finish_oldest_waiting() == [parent] and parent.finish_reason == "length"
    assert list(scheduler.waiting) == [child]  # prefills on its own instead of waiting forever
    aborted, orphan = _seq([1], 2, 0, n=2), _seq([1], 3, 1, n=2)
    scheduler.add(aborted, forks=[orphan])
    scheduler.finish(aborted, "abort")
    assert orphan.finish_reason == "abort" and list(scheduler.waiting) == [child]


def test_only_the_scheduler_writes_sequence_progress():
    """num_computed_tokens / num_cached_tokens are assigned in scheduler.py alone (and initialised in Sequence)."""
    writers = set()
    for path in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            for target in targets:
                for leaf in ast.walk(target) if target is not None else ():
                    if isinstance(leaf, ast.Attribute) and leaf.attr in ("num_computed_tokens", "num_cached_tokens"):
                        writers.add(path.name)
    assert writers == {"scheduler.py", "sequence.py"}
