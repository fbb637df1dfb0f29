"""The engine loop in this process: requests join at step boundaries, aborts free blocks within a step,
bad requests change nothing, a failing step fails only the requests in flight, a full queue says so."""

import asyncio
import time

import pytest

from fastx import LLM, SamplingParams
from fastx.serve.bridge import EngineFailure, EngineLoop, QueueFull
from fastx.serve.metrics import ServerMetrics

LONG = SamplingParams(temperature=0, max_tokens=120, ignore_eos=True)


def _llm(tiny_llama, **kwargs):
    return LLM(tiny_llama, dtype="float32", device="cpu", num_kv_blocks=64, **kwargs)


def _run(engine, scenario, metrics=None, **kwargs):
    """Start a loop on `engine`, run the async `scenario(loop)`, stop the loop; returns the scenario's result."""
    loop = EngineLoop(engine, metrics or ServerMetrics(), **kwargs)
    loop.start()
    try:
        return asyncio.run(asyncio.wait_for(scenario(loop), timeout=120))
    finally:
        loop.stop()


async def _finish(handle) -> tuple[list[int], str, object]:
    tokens, text = [], ""
    while True:
        update = await handle.next()
        for delta in update.deltas:
            tokens += delta.token_ids
            text += delta.text
        if update.done:
            return tokens, text, update.usage


def test_a_request_joins_the_running_batch_and_matches_a_solo_run(tiny_llama):
    llm = _llm(tiny_llama)
    prompt_a, prompt_b = [5, 6, 7, 8], [100, 200, 300]
    params_b = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    solo = llm.generate([{"prompt_token_ids": prompt_b}], params_b, use_tqdm=False)[0].outputs[0]

    async def scenario(loop):
        a = await loop.submit([prompt_a], LONG, time.monotonic())
        for _ in range(3):
            await a.next()
        b = await loop.submit([prompt_b], params_b, time.monotonic())
        tokens_b, text_b, usage_b = await _finish(b)
        a_done_first = a.done
        rest_a = await _finish(a)
        return tokens_b, text_b, usage_b, a_done_first, rest_a

    tokens_b, text_b, usage_b, a_done_first, (tokens_a, _, usage_a) = _run(llm.engine, scenario)
    assert not a_done_first, "b waited for a to finish instead of joining its batch"
    assert tokens_b == solo.token_ids and text_b == solo.text
    assert usage_b.prompt_tokens == 3 and usage_b.completion_tokens == 10
    assert usage_a.completion_tokens == 120 and len(tokens_a) == 120 - 3  # three updates were read before
    assert llm.engine.requests == {} and llm.engine.stats().num_free_kv_blocks == 64


def test_a_malformed_request_changes_no_state(tiny_llama):
    llm = _llm(tiny_llama)
    before = llm.engine.stats()

    async def scenario(loop):
        with pytest.raises(ValueError, match="vocabulary"):  # the first prompt is fine, the second is not
            await loop.submit([[1, 2, 3], [10**9]], LONG, time.monotonic())
        with pytest.raises(ValueError, match="prompt"):
            await loop.submit([[]], LONG, time.monotonic())
        await asyncio.sleep(0.05)
        assert llm.engine.requests == {} and llm.engine.stats() == before
        tokens, _, _ = await _finish(await loop.submit([[1, 2, 3]], SamplingParams(max_tokens=4), time.monotonic()))
        return tokens

    assert len(_run(llm.engine, scenario)) <= 4
    assert llm.engine.stats().num_free_kv_blocks == 64


def test_an_abort_frees_the_blocks_before_the_next_step(tiny_llama):
    llm = _llm(tiny_llama)
    engine = llm.engine
    steps, discarded = [0], []
    step, discard = engine.step, engine.discard_request

    def counting_step():
        steps[0] += 1
        return step()

    def recording_discard(request_id):
        used = engine.stats().num_kv_blocks - engine.stats().num_free_kv_blocks
        discard(request_id)
        after = engine.stats().num_kv_blocks - engine.stats().num_free_kv_blocks
        discarded.append((steps[0], used, after))

    engine.step, engine.discard_request = counting_step, recording_discard

    async def scenario(loop):
        keep = await loop.submit([[9, 8, 7]], LONG, time.monotonic())
        leave = await loop.submit([list(range(10, 60))], LONG, time.monotonic())
        for _ in range(4):
            await leave.next()
        at_abort = steps[0]
        leave.abort()
        for _ in range(3):
            await keep.next()
        keep.abort()
        return at_abort

    at_abort = _run(engine, scenario)
    (step_of_discard, used_before, used_after), _ = discarded
    assert step_of_discard <= at_abort + 1, "the abort waited more than one step"
    assert used_after < used_before  # the 53-token request's blocks went back at once
    assert engine.requests == {} and engine.stats().num_free_kv_blocks == 64


def test_a_failing_step_fails_its_requests_and_the_loop_goes_on(tiny_llama):
    llm = _llm(tiny_llama)
    runner = llm.engine.runner
    real_run, calls = runner.run, [0]

    def flaky_run(batch):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("device lost")
        return real_run(batch)

    runner.run = flaky_run
    metrics = ServerMetrics()

    async def scenario(loop):
        first = await loop.submit([[4, 5, 6]], LONG, time.monotonic())
        with pytest.raises(EngineFailure, match="device lost"):
            await _finish(first)
        assert loop.alive
        tokens, _, usage = await _finish(await loop.submit([[4, 5, 6]], SamplingParams(max_tokens=5), time.monotonic()))
        return tokens, usage

    tokens, usage = _run(llm.engine, scenario, metrics)
    assert usage.completion_tokens == len(tokens) <= 5
    assert llm.engine.requests == {} and llm.engine.stats().num_free_kv_blocks == 64
    assert metrics.step_failures._value.get() == 1


def test_a_full_queue_refuses_and_keeps_what_it_has(tiny_llama):
    llm = _llm(tiny_llama, max_num_seqs=1)

    async def scenario(loop):
        running = await loop.submit([[1, 2]], LONG, time.monotonic())
        await running.next()  # admitted: the one running slot is taken
        waiting = await loop.submit([[3, 4]], LONG, time.monotonic())
        with pytest.raises(QueueFull, match="queue is full"):
            await loop.submit([[5, 6]], LONG, time.monotonic())
        assert len(llm.engine.requests) == 2
        running.abort()
        first = await waiting.next()  # admitted once the slot frees
        waiting.abort()
        return first

    assert _run(llm.engine, scenario, max_waiting_requests=1).deltas
    assert llm.engine.stats().num_free_kv_blocks == 64
    with pytest.raises(ValueError, match="max_waiting_requests"):
        EngineLoop(llm.engine, ServerMetrics(), max_waiting_requests=0)
