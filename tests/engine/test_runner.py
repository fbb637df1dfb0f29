"""The decode step is ready for CUDA graphs: fixed launches per bucket, persistent inputs, one read-back.

Checked on the CPU through Triton's interpreter (the kernel path a GPU runs): a CUDA graph replays
the launches it recorded, so every decode step of a bucket must launch the same kernels with the
same grids, scalars and persistent pointers, whatever the context lengths; and the host may read
one value back from the device per step (the sampled tokens), no more.
"""

import collections

import pytest
import torch
import transformers

import fastx.kernels._common as kernel_common
from fastx import LLM, SamplingParams
from fastx.engine.cuda_graphs import bucket_for, decode_buckets
from fastx.kernels.launches import record_launches
from fastx.ops._backend import forced_backend

interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="interpreter checks: the CPU stands in for a GPU"
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        num_hidden_layers=1,  # one layer: the interpreter runs 100+ steps in seconds
        max_position_embeddings=256,
    )
    folder = tmp_path_factory.mktemp("llama")
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def test_buckets():
    assert decode_buckets(1) == [1]
    assert decode_buckets(6) == [1, 2, 4, 6]
    assert decode_buckets(20) == [1, 2, 4, 8, 16, 20]
    assert [bucket_for(n, decode_buckets(20)) for n in (1, 3, 5, 9, 17, 20)] == [1, 4, 8, 16, 20, 20]
    with pytest.raises(ValueError, match="n_seqs: expected at most 20 sequences"):
        bucket_for(21, decode_buckets(20))


def _persistent_pointers(llm) -> list[tuple[int, int]]:
    """(start, end) byte ranges of what lives across steps: step buffers, KV cache, weights."""
    runner = llm.engine.runner
    tensors = [t for pair in runner.kv_caches for t in pair]
    tensors += [s.device for s in vars(runner.buffers).values() if hasattr(s, "device")]
    tensors += list(runner.model.parameters()) + list(runner.model.buffers())
    return [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in tensors]


def _signature(launches, persistent):
    """What a replay repeats: kernels, grids, scalars, and the pointers of persistent tensors.

    Intermediates (activations) get fresh memory each eager step; under capture they live in the
    graph's pool, so for them only shape, dtype and strides must repeat. Every integer tensor a
    kernel reads (ids, positions, slots, tables, lengths) must be persistent: one built from host
    lists during the step would be replayed stale.
    """
    out = []
    for launch in launches:
        tensors = []
        for name, t in launch.tensors.items():
            ptr = t.data_ptr()
            if any(lo <= ptr < hi for lo, hi in persistent):
                tensors.append((name, "persistent", ptr, tuple(t.shape), t.stride()))
            else:
                assert t.is_floating_point(), f"{launch.kernel}.{name}: int tensor built during the step"
                tensors.append((name, "intermediate", t.dtype, tuple(t.shape), t.stride()))
        out.append((launch.kernel, launch.grid, sorted(launch.scalars.items(), key=str), launch.options, tensors))
    return out


@interpreter_only
def test_every_decode_step_of_a_bucket_launches_the_same_kernels(tiny_llama):
    with forced_backend("triton"):
        llm = LLM(tiny_llama, dtype="float32", num_kv_blocks=24, block_size=16, max_num_seqs=4)
        engine = llm.engine
        # Three sequences finishing apart: buckets 4, 2 and 1 each run many steps. Contexts grow
        # from 20-40 to ~150 tokens: over the 64-token tiles every partition count from 1 to 3.
        lengths = [(20, 110), (33, 60), (40, 25)]
        prompts = [[(7 * i + j) % 100 + 1 for j in range(prompt)] for i, (prompt, _) in enumerate(lengths)]
        params = [SamplingParams(temperature=0, max_tokens=new, ignore_eos=True) for _, new in lengths]
        request_ids = [engine.add_request(ids, p) for ids, p in zip(prompts, params)]
        persistent = _persistent_pointers(llm)
        by_bucket = collections.defaultdict(list)
        contexts = collections.defaultdict(set)
        steps = 0
        while engine.has_unfinished():
            batch_size = len(engine.scheduler.running)
            decode = batch_size > 0 and not engine.scheduler.waiting
            with record_launches() as launches:
                engine.step()
            if decode and launches:
                rows = bucket_for(batch_size, engine.runner.buckets)
                by_bucket[rows].append(_signature(launches, persistent))
                contexts[rows].update(len(s) for s in engine.scheduler.running)
                steps += 1
    assert steps >= 100 and set(by_bucket) == {1, 2, 4}
    # Padded rows change nothing: the kernel path's tokens are the eager path's.
    eager = LLM(tiny_llama, dtype="float32", num_kv_blocks=24, block_size=16, max_num_seqs=4)
    expected = [out.outputs[0].token_ids for out in eager.generate(prompts, params, use_tqdm=False)]
    assert [engine.get_request(i).seqs[0].output_token_ids for i in request_ids] == expected
    kernels = {launch[0] for sig in by_bucket[4] for launch in sig}
    assert {"_paged_decode_partition_kernel", "_paged_decode_reduce_kernel", "_write_kv_cache_kernel"} <= kernels
    for rows, signatures in by_bucket.items():
        assert max(contexts[rows]) - min(contexts[rows]) > 20, "contexts must vary within the bucket"
        for step, sig in enumerate(signatures[1:], start=1):
            assert sig == signatures[0], f"bucket {rows}: step {step} launches differ from its first step"


@interpreter_only
def test_a_decode_step_reads_one_value_back_from_the_device(tiny_llama, monkeypatch):
    """Every device -> host read fastx makes in a decode step is counted; only the sampled tokens may go."""
    reads = collections.Counter()

    def counting(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            import sys

            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("fastx"):
                reads[f"{caller}:{name}"] += 1
            return original(self, *args, **kwargs)

        return method

    with forced_backend("triton"):
        llm = LLM(tiny_llama, dtype="float32", num_kv_blocks=24, block_size=16, max_num_seqs=4)
        engine = llm.engine
        params = [
            SamplingParams(temperature=0, max_tokens=8),
            SamplingParams(temperature=0.8, top_p=0.9, top_k=20, max_tokens=8, seed=3),
            SamplingParams(temperature=1.0, presence_penalty=0.5, repetition_penalty=1.2, min_tokens=4, max_tokens=8),
        ]
        for i, p in enumerate(params):
            engine.add_request([i + 1] * (10 + i), p)
        engine.step()  # the prefill
        # On CUDA the launchers' value checks run only with FASTX_DEBUG=1; here too.
        monkeypatch.setattr(kernel_common, "checks_values", lambda t: False)
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"):
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        for _ in range(3):
            reads.clear()
            engine.step()
            assert dict(reads) == {"fastx.engine.sampler:tolist": 1}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_give_the_eager_tokens(tiny_llama):
    prompts = [[1, 2, 3], [5] * 30, list(range(1, 60)), [9, 8]]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    outputs = {}
    for eager in (True, False):
        llm = LLM(tiny_llama, dtype="bfloat16", num_kv_blocks=64, max_num_seqs=8, enforce_eager=eager)
        assert (llm.engine.runner.graphs is None) == eager
        outputs[eager] = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    assert outputs[False] == outputs[True]
