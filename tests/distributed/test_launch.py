"""LLM(tensor_parallel_size=2) on the CPU with gloo: the same greedy tokens as one process, half the
weights per rank, twice the KV tokens, the errors before any work, a killed worker, a clean exit.

Each LLM here starts a worker process (a fresh interpreter that loads its shard), so the tiny Llama's
engine is built once per module and shared by the tests that only generate.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import transformers

from fastx import LLM, SamplingParams
from fastx.distributed import launch
from fastx.distributed.worker import weight_bytes

PROMPTS = [[1, 5, 9, 13], [7, 3, 2, 8, 11, 4, 6, 20, 31, 2, 9, 40, 41, 42, 17, 3, 5, 60, 61]]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
ENGINE = {"dtype": "float32", "device": "cpu", "kv_cache_memory": 1 << 20, "skip_tokenizer_init": True}


def _randomize(model, scale):
    """Weights large enough that the next token is decided by a clear margin (init's 0.02 gives near-ties)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name or "ln" in name else scale * torch.randn_like(p))
    return model


def _tiny_llama(folder, kv_heads, tie):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=97,  # odd: the last rank's vocabulary share is padded
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    _randomize(transformers.LlamaForCausalLM(config), 0.2).save_pretrained(folder)
    return folder


def _tiny_gpt2(folder):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=99, n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=96)
    _randomize(transformers.GPT2LMHeadModel(config), 0.5).save_pretrained(folder)
    return folder


def _children() -> set[int]:
    """Live child processes of this one (workers this test started and has not reaped)."""
    pids = set()
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
            pids |= {int(p) for p in f.read().split()}
    return pids


def _generate(llm, prompts=PROMPTS, params=GREEDY):
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)


def assert_same_greedy(reference, outputs, tie=1e-4):
    """Token for token, except that a first divergence is accepted where N=1's two best logits tie
    within `tie` (the ranks sum their partial products in another order); nothing after it is compared."""
    for ref, out in zip(reference, outputs):
        for ref_seq, seq in zip(ref.outputs, out.outputs):
            for i, (want, got) in enumerate(zip(ref_seq.token_ids, seq.token_ids)):
                if want != got:
                    step = ref_seq.logprobs[i]
                    assert got in step and step[want] - step[got] <= tie, (i, want, got, step)
                    break
            assert len(seq.token_ids) == len(ref_seq.token_ids)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = _tiny_llama(tmp_path_factory.mktemp("llama-gqa"), kv_heads=2, tie=False)
    reference = LLM(folder, **ENGINE)
    parallel = LLM(folder, tensor_parallel_size=2, **ENGINE)
    yield reference, parallel
    parallel.close()


@pytest.fixture
def no_open_group(llama):
    """torch.distributed allows one default group per process: the shared LLM closes before a test builds its own."""
    llama[1].close()
    return llama[0].model.name_or_path


def test_greedy_tokens_equal_one_process(llama):
    reference, parallel = llama
    want = _generate(reference)
    assert len(set(want[0].outputs[0].token_ids)) > 3  # not a degenerate repetition
    assert_same_greedy(want, _generate(parallel))


def test_chunked_prefill_and_forked_samples(llama):
    """A prompt over the step budget (a chunk step samples no row), and n=2 samples forking one prompt
    (copy-on-write block copies travel with the step)."""
    reference, parallel = llama
    long_prompt = [(7 * i + 3) % 97 for i in range(40)]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, n=2, logprobs=2)
    for llm in (reference, parallel):
        llm.engine.scheduler.max_num_batched_tokens = 16  # the prompt takes three steps
    try:
        assert_same_greedy(_generate(reference, [long_prompt], params), _generate(parallel, [long_prompt], params))
    finally:
        for llm in (reference, parallel):
            llm.engine.scheduler.max_num_batched_tokens = 8192


def test_each_rank_holds_half_the_weights_and_twice_the_kv_tokens(llama):
    reference, parallel = llama
    one = weight_bytes(reference.model)
    per_rank = parallel.tensor_parallel.weight_bytes(parallel.model)
    assert len(per_rank) == 2 and per_rank[0] == per_rank[1]
    # half, plus what every rank keeps whole: the norms (a few hundred floats here)
    replicated = sum(p.numel() * 4 for n, p in reference.model.named_parameters() if "norm" in n)
    assert per_rank[0] == pytest.approx(one / 2 + replicated / 2, abs=64 * 4)  # + one padded vocab row
    assert parallel.model.num_kv_heads == 1 and reference.model.num_kv_heads == 2
    assert parallel.engine.capacity_tokens == 2 * reference.engine.capacity_tokens  # same bytes per rank


def test_one_tensor_parallel_llm_per_process(llama):
    before = _children()
    with pytest.raises(RuntimeError, match="already belongs to a torch.distributed process group"):
        LLM(llama[0].model.name_or_path, tensor_parallel_size=2, **ENGINE)
    assert _children() == before
    assert len(_generate(llama[1], [[1, 2, 3]])) == 1  # the open one is untouched


def test_kv_heads_replicated_when_fewer_than_ranks_and_tied_embeddings(no_open_group, tmp_path):
    folder = _tiny_llama(tmp_path, kv_heads=1, tie=True)
    want = _generate(LLM(folder, **ENGINE))
    with LLM(folder, tensor_parallel_size=2, **ENGINE) as parallel:
        assert parallel.model.num_kv_heads == 1
        assert_same_greedy(want, _generate(parallel))


def test_gpt2(no_open_group, tmp_path):
    folder = _tiny_gpt2(tmp_path)
    want = _generate(LLM(folder, **ENGINE))
    assert len(set(want[1].outputs[0].token_ids)) > 3
    with LLM(folder, tensor_parallel_size=2, **ENGINE) as parallel:
        assert_same_greedy(want, _generate(parallel))
        workers = list(parallel.tensor_parallel.workers)
    assert [w.returncode for w in workers] == [0]  # stopped cleanly by the context manager
    assert not _children()


def test_sizes_that_do_not_split_the_heads_fail_before_any_process(llama, tmp_path):
    reference, _ = llama
    folder = reference.model.name_or_path
    before = _children()
    with pytest.raises(ValueError, match="3 ranks cannot split .*'s 4 query heads and 2 KV heads"):
        LLM(folder, tensor_parallel_size=3, **ENGINE)
    with pytest.raises(ValueError, match="tensor_parallel_size: expected a positive integer"):
        LLM(folder, tensor_parallel_size=0, **ENGINE)
    with pytest.raises(ValueError, match="needs a checkpoint .* got a loaded LlamaForCausalLM"):
        LLM(reference.model, tensor_parallel_size=2, **ENGINE)
    assert _children() == before


def test_more_ranks_than_gpus_fail_before_any_process(llama, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    before = _children()
    with pytest.raises(ValueError, match="2 ranks .* need 2 CUDA devices, this machine has 1"):
        LLM(llama[0].model.name_or_path, tensor_parallel_size=2, **{**ENGINE, "device": "cuda"})
    assert _children() == before


def test_a_worker_that_dies_before_the_group_forms(llama, monkeypatch):
    monkeypatch.setattr(launch, "WORKER_COMMAND", [sys.executable, "-c", "import sys; sys.exit(3)"])
    before = _children()
    with pytest.raises(RuntimeError, match="worker rank 1 .* exited with code 3 before the group formed"):
        LLM(llama[0].model.name_or_path, tensor_parallel_size=2, **ENGINE)
    assert _children() == before


def test_a_killed_worker_raises_in_the_parent(no_open_group):
    parallel = LLM(no_open_group, tensor_parallel_size=2, **ENGINE)
    (worker,) = parallel.tensor_parallel.workers
    os.kill(worker.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"worker rank 1 \(pid {worker.pid}\) exited with code -9"):
        _generate(parallel)
    assert time.monotonic() - started < 30  # an error, not a hang
    with pytest.raises(RuntimeError, match="cannot continue"):  # the LLM stays failed
        _generate(parallel)
    parallel.close()
    assert worker.pid not in _children()


AT_EXIT_SCRIPT = """
import sys
from fastx import LLM
llm = LLM(sys.argv[1], tensor_parallel_size=2, dtype="float32", device="cpu", kv_cache_memory=1 << 20,
          skip_tokenizer_init=True)
print("WORKER", llm.tensor_parallel.workers[0].pid, flush=True)  # never closed: atexit stops it
"""


def test_a_script_that_never_closes_exits_cleanly(no_open_group, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(AT_EXIT_SCRIPT)
    run = subprocess.run([sys.executable, str(script), no_open_group], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    (pid,) = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("WORKER")]
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


TORCHRUN_SCRIPT = """
import sys
from fastx import LLM, SamplingParams
llm = LLM(sys.argv[1], tensor_parallel_size=2, dtype="float32", device="cpu", kv_cache_memory=1 << 20,
          skip_tokenizer_init=True)
out = llm.generate([{"prompt_token_ids": [1, 5, 9, 13]}], SamplingParams(temperature=0, max_tokens=8,
                   ignore_eos=True), use_tqdm=False)
print("TOKENS", out[0].outputs[0].token_ids, flush=True)  # only rank 0 gets here
"""


def test_torchrun_launch(llama, no_open_group, tmp_path):
    reference, _ = llama
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    want = _generate(reference, [[1, 5, 9, 13]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    command += [str(script), reference.model.name_or_path]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("TOKENS")]
    assert lines == [f"TOKENS {want[0].outputs[0].token_ids}"]


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]


@pytest.mark.slow  # ~75 s on 2 shared cores: four loads of the GGUF (one per rank, one reference)
def test_smollm2_default_model(no_open_group, smollm2_gguf):
    """The default model (its GGUF, dequantized as it loads): 9 query heads and 3 KV heads split three
    ways only, so N=2 is refused by name and N=3 (one KV head per rank) must decode as one process does."""
    engine = {"dtype": "float32", "device": "cpu", "kv_cache_memory": 64 << 20}
    with pytest.raises(ValueError, match=r"2 ranks cannot split .*'s 9 query heads and 3 KV heads.*\[1, 3\]"):
        LLM(smollm2_gguf, tensor_parallel_size=2, **engine)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=2)
    reference = LLM(smollm2_gguf, **engine)
    want = reference.chat(CHATS, params, use_tqdm=False)
    one = weight_bytes(reference.model)
    del reference
    with LLM(smollm2_gguf, tensor_parallel_size=3, **engine) as parallel:
        assert_same_greedy(want, parallel.chat(CHATS, params, use_tqdm=False))
        per_rank = parallel.tensor_parallel.weight_bytes(parallel.model)
    # a third each, plus the norms every rank keeps whole (61 vectors of 576 floats)
    assert max(per_rank) == pytest.approx(one / 3, rel=0.002)
