"""The paged engine against transformers' generate: greedy equality, preemption, prefix caching, n, seeds."""

import random

import pytest
import torch
import transformers

from fastx import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
PROMPTS = [[1, 2, 3, 4, 5], [7] * 13, [9, 8, 7], list(range(20, 57))]


def _tiny(kind, folder):
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=101, n_embd=80, n_head=5, n_layer=3, n_inner=200, n_positions=160)
        model = transformers.GPT2LMHeadModel(config)
    else:  # Llama with GQA (6 query heads over 2 kv heads)
        config = transformers.LlamaConfig(
            vocab_size=101,
            hidden_size=96,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=200,
            num_hidden_layers=3,
            max_position_embeddings=160,
        )
        model = transformers.LlamaForCausalLM(config)
    model.eval().save_pretrained(folder)
    return model


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    return _tiny(request.param, folder), folder


def _reference(model, prompt, n):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return out[0, len(prompt) :].tolist()


def _ids(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_greedy_tokens_equal_transformers_for_a_mixed_batch(tiny):
    model, folder = tiny
    outputs = LLM(folder, dtype="float32", num_kv_blocks=64).generate(PROMPTS, GREEDY, use_tqdm=False)
    for prompt, out in zip(PROMPTS, outputs):
        assert out.prompt_token_ids == prompt
        assert out.outputs[0].token_ids == _reference(model, prompt, 64)
        assert out.outputs[0].finish_reason == "length"


def test_packed_weights_keep_greedy_tokens_equal_to_transformers(tiny):
    model, folder = tiny
    # four prompts: batched rows take the packed GEMM (a CPU fp32 feature)
    llm = LLM(folder, device="cpu", dtype="float32", num_kv_blocks=64, pack_weights=True)
    for prompt, out in zip(PROMPTS, llm.generate(PROMPTS, GREEDY, use_tqdm=False)):
        assert out.outputs[0].token_ids == _reference(model, prompt, 64)
    with pytest.raises(ValueError, match="pack_weights: expected a float32 model on the CPU"):
        LLM(folder, device="cpu", dtype="bfloat16", num_kv_blocks=8, pack_weights=True)


def test_preemption_and_chunked_prefill_do_not_change_greedy_output(tiny):
    _, folder = tiny
    expected = _ids(LLM(folder, dtype="float32", num_kv_blocks=64).generate(PROMPTS, GREEDY, use_tqdm=False))
    # 112 slots: the longest sequence (37 + 64) fits alone, the four together (~330) need preemption
    small = LLM(folder, dtype="float32", num_kv_blocks=14, block_size=8, max_num_batched_tokens=16)
    assert _ids(small.generate(PROMPTS, GREEDY, use_tqdm=False)) == expected
    assert small.engine.scheduler.num_preemptions > 0
    assert small.engine.block_manager.num_free_blocks == 14  # nothing leaked


def test_prefix_caching_gives_the_same_output_and_computes_fewer_tokens(tiny):
    _, folder = tiny
    shared = list(range(30, 70))  # 40 tokens: two full blocks of 16 and 8 more
    prompts = [shared + [1, 2], shared + [3]]  # 42 and 41 tokens
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    off = LLM(folder, dtype="float32", num_kv_blocks=64, enable_prefix_caching=False)
    on = LLM(folder, dtype="float32", num_kv_blocks=64)
    expected = _ids(off.generate(prompts, params, use_tqdm=False))
    assert off.engine.num_prefill_tokens == 42 + 41
    assert _ids(on.generate(prompts, params, use_tqdm=False)) == expected
    # Same step: the second prompt reads the two blocks the first one writes in that step.
    assert on.engine.num_prefill_tokens == 42 + (41 - 32)
    before = on.engine.num_prefill_tokens
    again = on.generate(prompts, params, use_tqdm=False)
    assert _ids(again) == expected
    # Next run: both find the shared blocks cached; the first prompt's third block was never full.
    assert on.engine.num_prefill_tokens - before == (42 - 32) + (41 - 32)
    assert [o.num_cached_tokens for o in again] == [32, 32]  # reported, as vLLM's RequestOutput does


def test_same_step_sharing_survives_chunked_prefill(tiny):
    """A prompt split over steps publishes each block when its chunk is scheduled, not before."""
    _, folder = tiny
    shared = list(range(30, 70))
    prompts = [shared + [1, 2], shared + [3], shared[:20] + [5]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    expected = _ids(
        LLM(folder, dtype="float32", num_kv_blocks=64, enable_prefix_caching=False).generate(
            prompts, params, use_tqdm=False
        )
    )
    chunked = LLM(folder, dtype="float32", num_kv_blocks=64, block_size=8, max_num_batched_tokens=12)
    assert _ids(chunked.generate(prompts, params, use_tqdm=False)) == expected
    assert chunked.engine.num_prefill_tokens < 42 + 41 + 21


def test_a_failed_step_unpublishes_its_blocks_and_the_engine_recovers(tiny):
    """Prefix blocks are published when scheduled; a step that dies before writing their K/V must
    not leave them in the cache, nor leave a sequence that believes it read them."""
    _, folder = tiny
    shared = list(range(30, 70))
    prompts = [shared + [1, 2], shared + [3]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    expected = _ids(LLM(folder, dtype="float32", num_kv_blocks=64).generate(prompts, params, use_tqdm=False))
    llm = LLM(folder, dtype="float32", num_kv_blocks=64)
    engine, model = llm.engine, llm.engine.runner.model
    for prompt in prompts:
        engine.add_request(prompt, params)
    working = model.forward_packed

    def fail(*args, **kwargs):
        raise RuntimeError("injected failure")

    model.forward_packed = fail
    with pytest.raises(RuntimeError, match="injected failure"):
        engine.step()
    model.forward_packed = working
    assert not engine.block_manager.cached and engine.block_manager.num_free_blocks == 64
    assert [s.num_computed_tokens for s in engine.scheduler.waiting] == [0, 0]
    while engine.has_unfinished():
        engine.step()
    assert [engine.pop_request(r).seqs[0].output_token_ids for r in list(engine.requests)] == expected


def test_only_postprocess_moves_progress_through_chunks_forks_and_decodes(tiny):
    """The runner computes and reads; every step's progress is committed by the scheduler's postprocess."""
    _, folder = tiny
    llm = LLM(folder, dtype="float32", num_kv_blocks=64, block_size=8, max_num_batched_tokens=16)
    engine = llm.engine
    params = SamplingParams(n=2, temperature=1.0, max_tokens=5, seed=1, ignore_eos=True)
    for prompt in PROMPTS:
        engine.add_request(prompt, params)
    run, postprocess = engine.runner.run, engine.scheduler.postprocess

    def checked_run(batch):
        before = [s.num_computed_tokens for s in batch.seqs]
        logits = run(batch)
        assert [s.num_computed_tokens for s in batch.seqs] == before  # the runner wrote no progress
        assert logits.shape[0] == len(batch.draws)
        return logits

    def checked_postprocess(batch, tokens, logprobs):
        before = [s.num_computed_tokens for s in batch.seqs]
        changed = postprocess(batch, tokens, logprobs)
        for seq, n, start in zip(batch.seqs, batch.num_tokens, before):
            assert seq.is_finished or seq.num_computed_tokens == start + n
        for _, children in batch.forks:
            assert all(c.num_computed_tokens == c.num_prompt_tokens for c in children)
        return changed

    engine.runner.run, engine.scheduler.postprocess = checked_run, checked_postprocess
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        for seq in engine.scheduler.running:
            assert 1 <= len(seq) - seq.num_computed_tokens  # the newest token always awaits its K/V
            assert seq.num_output_tokens == 0 or len(seq) - seq.num_computed_tokens == 1
            assert len(seq.block_table) * 8 >= seq.num_computed_tokens
        assert all(s.num_computed_tokens == 0 for s in engine.scheduler.waiting)
    assert engine.scheduler.num_preemptions == 0 and steps > len(PROMPTS)  # chunked prefill took extra steps
    for rid in list(engine.requests):
        request = engine.pop_request(rid)
        assert [len(s.output_token_ids) for s in request.seqs] == [5, 5]
        assert all(s.num_computed_tokens == 0 and not s.block_table for s in request.seqs)  # released
    assert engine.block_manager.num_free_blocks == 64


def test_eos_ids_come_from_config_generation_config_and_tokenizer_for_llm_and_generate(tiny, tmp_path):
    import json
    import shutil
    import types

    from fastx import AutoModelForCausalLM

    model, folder = tiny
    prompt = [1, 2, 3, 4, 5]
    first = _reference(model, prompt, 1)[0]  # greedy's first token: made an end-of-sequence id below
    copy = shutil.copytree(folder, tmp_path / "checkpoint")
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [first, 97]}))
    tokenizer = types.SimpleNamespace(eos_token_id=98, decode=lambda ids, skip_special_tokens: " ".join(map(str, ids)))
    llm = LLM(copy, dtype="float32", num_kv_blocks=16, tokenizer=tokenizer)
    config_eos = model.config.eos_token_id
    assert llm.engine.eos_token_ids == {config_eos, first, 97, 98}
    out = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0].outputs[0]
    assert out.token_ids == [first] and out.finish_reason == "stop"
    ours = AutoModelForCausalLM.from_pretrained(copy)
    stopped = ours.generate(torch.tensor([prompt]), max_new_tokens=8, pad_token_id=0)
    assert stopped[0, 5:].tolist() == [first]  # the same derivation, no tokenizer
    explicit = ours.generate(torch.tensor([prompt]), max_new_tokens=8, eos_token_id=[], pad_token_id=0)
    assert explicit[0, 5:].tolist() == _reference(model, prompt, 8)  # an explicit eos_token_id replaces it


def test_parallel_samples_share_the_prompt_blocks(tiny):
    _, folder = tiny
    prompt = [t % 101 for t in range(100)]  # 6 full blocks of 16 shared by all samples, 1 partial block each
    llm = LLM(folder, dtype="float32", num_kv_blocks=64)

    def blocks_used(n):
        params = SamplingParams(n=n, temperature=1.0, max_tokens=6, seed=3, ignore_eos=True)
        llm.engine.add_request(prompt, params)
        peak = 0
        while llm.engine.has_unfinished():
            llm.engine.step()
            peak = max(peak, 64 - llm.engine.block_manager.num_free_blocks)
        (request_id,) = list(llm.engine.requests)
        return peak, llm.engine.pop_request(request_id)

    one, _ = blocks_used(1)
    four, request = blocks_used(4)
    assert len(request.seqs) == 4 and all(len(s.output_token_ids) == 6 for s in request.seqs)
    assert four <= 1.5 * one, (one, four)  # 10 blocks vs 7 here; vLLM-style sharing, no prompt copies


def test_seeded_sampling_does_not_depend_on_the_batch(tiny):
    _, folder = tiny
    seeded = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=12, seed=11, ignore_eos=True)
    other = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    alone = _ids(LLM(folder, dtype="float32", num_kv_blocks=64).generate([PROMPTS[0]], seeded, use_tqdm=False))
    batched = LLM(folder, dtype="float32", num_kv_blocks=64, seed=5).generate(
        PROMPTS, [other, seeded, other, other], use_tqdm=False
    )
    again = _ids(LLM(folder, dtype="float32", num_kv_blocks=64).generate([PROMPTS[1]], seeded, use_tqdm=False))
    assert batched[1].outputs[0].token_ids == again[0]
    assert len(alone[0]) == 12


def test_bad_requests_raise_before_any_state_changes_and_the_engine_keeps_serving(tiny):
    _, folder = tiny
    llm = LLM(folder, dtype="float32", num_kv_blocks=8, block_size=8)
    for prompts, message in [
        ([[]], "empty prompt"),
        ([[5, 101]], "outside the vocabulary"),
        ([list(range(1, 100)) * 2], "maximum is 160"),
        ([[1] * 70], "do not fit the KV cache"),
        ([[1, 2], "text"], "needs a tokenizer"),
    ]:
        with pytest.raises(ValueError, match=message):
            llm.generate(prompts, GREEDY, use_tqdm=False)
        assert not llm.engine.requests and llm.engine.block_manager.num_free_blocks == 8
    with pytest.raises(ValueError, match="SamplingParams.top_p"):
        llm.generate([[1]], SamplingParams(top_p=0))
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4


def test_soak_random_requests_with_aborts_and_preemptions_leak_nothing(tiny):
    model_kind = tiny[1].name
    if not model_kind.startswith("gpt2"):
        pytest.skip("one architecture is enough for the soak")
    _, folder = tiny
    rng = random.Random(0)
    llm = LLM(folder, dtype="float32", num_kv_blocks=24, block_size=4, max_num_seqs=16, max_num_batched_tokens=64)
    engine = llm.engine
    finished = aborted = 0
    live: list[int] = []
    for i in range(1000):
        prompt = [rng.randrange(101) for _ in range(rng.randint(1, 24))]
        params = SamplingParams(
            temperature=rng.choice([0, 1.0]), max_tokens=rng.randint(1, 12), seed=i, ignore_eos=True
        )
        live.append(engine.add_request(prompt, params))
        if rng.random() < 0.5:
            engine.step()
        if live and rng.random() < 0.1:
            victim = live.pop(rng.randrange(len(live)))
            engine.abort(victim)
        for rid in [r for r in live if engine.requests[r].finished]:
            live.remove(rid)
    while engine.has_unfinished():
        engine.step()
    for rid in list(engine.requests):
        request = engine.pop_request(rid)
        for seq in request.seqs:
            assert seq.finish_reason in ("length", "abort")
            finished += seq.finish_reason == "length"
            aborted += seq.finish_reason == "abort"
    assert finished + aborted == 1000 and aborted > 0
    assert engine.block_manager.num_free_blocks == 24
    assert engine.scheduler.num_preemptions > 0
    assert not engine.scheduler.running and not engine.scheduler.waiting


def test_model_generate_returns_transformers_layout_with_padding(tiny):
    """model.generate on a left-padded batch: prompt (as given) + new tokens, like transformers."""
    model, folder = tiny
    from fastx import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=10, pad_token_id=0)
    assert out.shape == (2, 15) and torch.equal(out[:, :5], ids)
    for row in range(2):
        prompt = ids[row][mask[row].bool()].tolist()
        assert out[row, 5:].tolist() == _reference(model, prompt, 10)  # padding changes nothing


def test_model_generate_errors_name_the_arguments_the_caller_typed(tiny):
    """transformers' argument names in the messages (never SamplingParams'), and ValueError, not AttributeError."""
    from fastx import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(tiny[1])
    with pytest.raises(ValueError, match=r"input_ids: expected a tensor .* got list"):
        ours.generate([[1, 2, 3]], max_new_tokens=3)
    with pytest.raises(ValueError, match=r"^max_new_tokens: expected an integer >= 0") as info:
        ours.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=-2)
    assert "SamplingParams" not in str(info.value)
    with pytest.raises(ValueError, match=r"^min_new_tokens:"):
        ours.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, min_new_tokens=-1)
    with pytest.raises(ValueError, match=r"^temperature:"):
        ours.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=True, temperature=-1.0)
