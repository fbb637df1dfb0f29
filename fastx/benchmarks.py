"""The workloads behind `fastx bench` and `fastx kernels --check`, shipped inside the package.

The repository's bench/ (pytest-benchmark) and tests/ folders are not installed by pip, so the
command carries compact versions of both here:

- `kernel_sweeps`: each fastx kernel (via fastx.ops, forced onto the Triton path) against eager
  PyTorch over a sweep of sizes, timed with triton.testing.do_bench on CUDA; GB/s or TFLOP/s from
  the byte / FLOP formula written beside each sweep, and % of the GPU's peak where it is known.
- `e2e`: all-MiniLM-L6-v2 sentence embeddings (fastx vs transformers, sentences/s) and
  SmolLM2-135M batch generation (fastx, vs transformers when installed, tokens/s).
- `self_check`: every fastx.ops op on the Triton path vs eager PyTorch on a few shapes and dtypes,
  judged by fastx.testing's rule (NUMERICS.md). On a CPU it must run under Triton's interpreter.

Legend: T = tokens, H = query heads, K = kv heads, D = head dim, L = sequence length,
S = sequences, N = features per row.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Peak figures of the GPUs fastx targets (vendor data sheets): HBM bandwidth in GB/s and dense
# (no sparsity) bf16 tensor-core TFLOP/s. Matched on torch.cuda.get_device_name(); most specific first.
GPU_PEAKS: list[tuple[tuple[str, ...], float, float]] = [
    (("H200",), 4800.0, 989.0),
    (("H100", "NVL"), 3900.0, 835.0),
    (("H100", "PCIE"), 2000.0, 756.0),
    (("H100",), 3350.0, 989.0),  # SXM5 / HBM3
    (("A100", "PCIE", "80GB"), 1935.0, 312.0),
    (("A100", "80GB"), 2039.0, 312.0),  # SXM4
    (("A100",), 1555.0, 312.0),  # 40 GB
]

NEEDS_CUDA = "kernel timings need a CUDA GPU: under the CPU interpreter they measure numpy, not the kernel"


def gpu_peaks(name: str) -> tuple[float | None, float | None]:
    """(peak GB/s, peak bf16 TFLOP/s) for a device name, or (None, None) when unknown."""
    upper = name.upper().replace("-", " ")
    for keys, gbps, tflops in GPU_PEAKS:
        if all(k in upper for k in keys):
            return gbps, tflops
    return None, None


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run fastx.ops on one backend ("triton" or "torch"); the variable is read at each call."""
    old = os.environ.get("FASTX_BACKEND")
    os.environ["FASTX_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTX_BACKEND", None)
        else:
            os.environ["FASTX_BACKEND"] = old


# ---------------------------------------------------------------------------------------------
# Kernel sweeps (CUDA)
# ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    family: str  # plot / table group: "layer_norm"
    size: str  # "4096x768"
    x: float  # the swept quantity, for plots
    fastx: Callable[[], Any]
    peer: Callable[[], Any]
    peer_name: str
    bytes_moved: int | None = None
    flops: int | None = None


def _elem(dtype) -> int:
    return dtype.itemsize


def _rotary_eager(x, cos, sin, positions):
    """rotate-half RoPE in torch ops, fp32 math and one rounding: x (T, N, D), cos/sin (P, D/2)."""
    import torch

    half = cos.shape[1]
    c, s = cos[positions][:, None, :], sin[positions][:, None, :]
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def kernel_cases(quick: bool, device: str = "cuda") -> Iterator[Case]:
    """The sweeps, one Case at a time (inputs are allocated lazily, so memory is freed in between)."""
    import torch
    import torch.nn.functional as F

    import fastx.ops as ops

    dt = torch.bfloat16
    e = _elem(dt)
    rows = 1024 if quick else 4096

    # LayerNorm / RMSNorm: bytes = rows * N * elem * 2 (read x, write y) + vectors * N * elem.
    for n in [768, 4096] if quick else [768, 1024, 2048, 4096, 8192, 16384, 32768]:
        x = torch.randn(rows, n, device=device, dtype=dt)
        w, b = torch.randn(n, device=device, dtype=dt), torch.randn(n, device=device, dtype=dt)
        yield Case("layer_norm", f"{rows}x{n}", n, lambda: ops.layer_norm(x, (n,), w, b),
                   lambda: F.layer_norm(x, (n,), w, b), "torch", bytes_moved=rows * n * e * 2 + 2 * n * e)  # fmt: skip
        yield Case("rms_norm", f"{rows}x{n}", n, lambda: ops.rms_norm(x, (n,), w, 1e-6),
                   lambda: F.rms_norm(x, (n,), w, 1e-6), "torch", bytes_moved=rows * n * e * 2 + n * e)  # fmt: skip

    # GELU: bytes = rows * N * elem * 2.
    for n in [3072] if quick else [1024, 3072, 11008, 16384]:
        x = torch.randn(rows, n, device=device, dtype=dt)
        yield Case("gelu", f"{rows}x{n}", n, lambda: ops.gelu(x), lambda: F.gelu(x), "torch",
                   bytes_moved=rows * n * e * 2)  # fmt: skip

    # SiLU-and-mul (SwiGLU gate): input (rows, 2d) -> (rows, d); bytes = rows * d * elem * 3.
    for d in [2048] if quick else [2048, 5632, 11008, 14336]:
        x = torch.randn(rows, 2 * d, device=device, dtype=dt)
        yield Case("silu_and_mul", f"{rows}x{d}", d, lambda: ops.silu_and_mul(x),
                   lambda: F.silu(x[:, :d]) * x[:, d:], "torch", bytes_moved=rows * d * e * 3)  # fmt: skip

    # Rotary on q (T, 32, 128) and k (T, 8, 128): bytes = T * (H + K) * D * elem * 2 + 2 * T * D/2 * 4.
    for t in [1024] if quick else [1024, 4096, 16384]:
        h, k, d = 32, 8, 128
        q, kk = torch.randn(t, h, d, device=device, dtype=dt), torch.randn(t, k, d, device=device, dtype=dt)
        angles = torch.arange(t, device=device)[:, None] * (1.0 / 10000.0 ** (torch.arange(0, d, 2, device=device) / d))
        cos, sin, pos = angles.cos(), angles.sin(), torch.arange(t, device=device)
        yield Case("rotary", f"T={t}", t, lambda: ops.rotary_embedding(q, kk, cos, sin, pos),
                   lambda: (_rotary_eager(q, cos, sin, pos), _rotary_eager(kk, cos, sin, pos)), "torch",
                   bytes_moved=t * (h + k) * d * e * 2 + 2 * t * (d // 2) * 4)  # fmt: skip

    # Causal attention forward, B * L = 16k tokens (4k quick), H * D = 2048, D = 128:
    # FLOPs = 4 * B * H * L^2 * D / 2 (two matmuls, lower triangle only). Peer: torch SDPA (FlashAttention-2).
    total = 4096 if quick else 16384
    for seq in [512, 2048] if quick else [512, 1024, 2048, 4096, 8192]:
        batch, heads, d = total // seq, 16, 128
        q, k, v = (torch.randn(batch, heads, seq, d, device=device, dtype=dt) for _ in range(3))
        yield Case("attention", f"L={seq}", seq, lambda: ops.scaled_dot_product_attention(q, k, v, is_causal=True),
                   lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), "torch SDPA",
                   flops=4 * batch * heads * seq * seq * d // 2)  # fmt: skip

    # Paged decode, H = 32, K = 8, D = 128, 16-token blocks, context L:
    # bytes = 2 * S * L * K * D * elem (K and V) + 2 * S * H * D * elem (q in, out).
    context = 512 if quick else 2048
    for seqs in [1, 8] if quick else [1, 8, 32, 64]:
        h, kvh, d, bs = 32, 8, 128, 16
        blocks = math.ceil(context / bs)
        k_cache = torch.randn(seqs * blocks, bs, kvh, d, device=device, dtype=dt)
        v_cache = torch.randn_like(k_cache)
        tables = torch.randperm(seqs * blocks, device=device).to(torch.int32).view(seqs, blocks)
        lens = torch.full((seqs,), context, dtype=torch.int32, device=device)
        q = torch.randn(seqs, h, d, device=device, dtype=dt)

        def dense(q=q, k_cache=k_cache, v_cache=v_cache, tables=tables, seqs=seqs):
            kk = k_cache[tables.long()].reshape(seqs, -1, kvh, d)[:, :context].transpose(1, 2)
            vv = v_cache[tables.long()].reshape(seqs, -1, kvh, d)[:, :context].transpose(1, 2)
            return F.scaled_dot_product_attention(q[:, :, None], kk, vv, enable_gqa=True)[:, :, 0]

        yield Case("paged_decode", f"S={seqs},L={context}", seqs,
                   lambda: ops.paged_decode_attention(q, k_cache, v_cache, tables, lens, max_context_len=context),
                   dense, "gather + SDPA",
                   bytes_moved=2 * seqs * context * kvh * d * e + 2 * seqs * h * d * e)  # fmt: skip


def kernel_sweeps(quick: bool, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every Case on CUDA; one result row per case."""
    import torch
    from triton.testing import do_bench

    name = torch.cuda.get_device_name()
    peak_gbps, peak_tflops = gpu_peaks(name)
    warmup, rep = (5, 20) if quick else (25, 100)
    rows = []
    with backend("triton"):
        for case in kernel_cases(quick):
            fastx_ms = do_bench(case.fastx, warmup=warmup, rep=rep)
            with backend("torch"):
                peer_ms = do_bench(case.peer, warmup=warmup, rep=rep)
            if case.bytes_moved is not None:
                metric, amount, peak = "GB/s", case.bytes_moved / 1e9, peak_gbps
            else:
                metric, amount, peak = "TFLOP/s", case.flops / 1e12, peak_tflops
            rate = amount / (fastx_ms / 1e3)
            row = {
                "op": case.family, "size": case.size, "x": case.x, "device": name, "dtype": "bf16",
                "fastx_ms": fastx_ms, "peer": case.peer_name, "peer_ms": peer_ms, "ratio": peer_ms / fastx_ms,
                "metric": metric, "fastx_rate": rate, "peer_rate": amount / (peer_ms / 1e3),
                "pct_of_peak": 100.0 * rate / peak if peak else None,
                "bytes": case.bytes_moved, "flops": case.flops,
            }  # fmt: skip
            rows.append(row)
            log(format_kernel_row(row))
            del case
            torch.cuda.empty_cache()
    return rows


KERNEL_HEADER = f"{'op':<13} {'size':<14} {'fastx ms':>9} {'peer ms':>9} {'ratio':>6} {'rate':>16} {'% peak':>7}  peer"


def format_kernel_row(r: dict[str, Any]) -> str:
    pct = f"{r['pct_of_peak']:.0f}%" if r.get("pct_of_peak") is not None else "-"
    rate = f"{r['fastx_rate']:.1f} {r['metric']}"
    return (f"{r['op']:<13} {r['size']:<14} {r['fastx_ms']:>9.4f} {r['peer_ms']:>9.4f} {r['ratio']:>5.2f}x "
            f"{rate:>16} {pct:>7}  {r['peer']}")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# End-to-end workloads (CPU or CUDA)
# ---------------------------------------------------------------------------------------------
def _sentences(n: int) -> list[str]:
    rng = random.Random(0)
    words = ("the quick brown fox jumps over a lazy dog while transformer models encode sentences into "
             "dense vectors for semantic search and clustering of documents").split()  # fmt: skip
    lengths = [3, 5, 8, 12, 20, 40, 80, 120]  # words; a long tail as in real corpora
    return [" ".join(rng.choice(words) for _ in range(rng.choice(lengths))) for _ in range(n)]


def _best_time(fn: Callable[[], Any], rounds: int, sync: Callable[[], None]) -> float:
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def e2e_embeddings(model_path: str, device: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """all-MiniLM-L6-v2 forward passes over batches of 32 tokenized sentences: sentences/s."""
    import torch

    from fastx import AutoModel, AutoTokenizer

    sentences = _sentences(32 if quick else 256)
    rounds = 1 if quick else 3
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    batches = [tokenizer(sentences[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
               for i in range(0, len(sentences), 32)]  # fmt: skip
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ours = AutoModel.from_pretrained(model_path, device=device)

    @torch.inference_mode()
    def run_fastx():
        for enc in batches:
            ours(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))

    run_fastx()  # warm-up (Triton compiles on first launch)
    result: dict[str, Any] = {"workload": "all-MiniLM-L6-v2 embeddings", "unit": "sentences/s",
                              "sentences": len(sentences), "batch": 32, "device": device}  # fmt: skip
    result["fastx"] = len(sentences) / _best_time(run_fastx, rounds, sync)
    result["peer"] = None
    if not _have("transformers"):
        log("embeddings: transformers is not installed; fastx alone is timed (pip install transformers to compare)")
    else:
        import transformers

        theirs = transformers.AutoModel.from_pretrained(model_path).to(device).eval()

        @torch.inference_mode()
        def run_transformers():
            for enc in batches:
                theirs(**enc)

        run_transformers()
        result["peer"] = len(sentences) / _best_time(run_transformers, rounds, sync)
        result["peer_name"] = f"transformers {transformers.__version__}"
    return result


def e2e_generation(model_path: str, device: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """SmolLM2 batch generation: N prompts x M new tokens (EOS ignored so every run makes the same tokens)."""
    import torch

    from fastx import LLM, AutoTokenizer, SamplingParams

    n_prompts, new_tokens = (2, 4) if quick else (32, 64)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    prompts = [f"Write a short story about {s}." for s in _sentences(n_prompts)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    llm = LLM(model_path, dtype=dtype, device=device, tokenizer=tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)  # warm-up
    made = []

    def run_fastx():
        outs = llm.generate(prompts, params, use_tqdm=False)
        made.append(sum(len(o.outputs[0].token_ids) for o in outs))

    seconds = _best_time(run_fastx, 1 if quick else 2, sync)
    result: dict[str, Any] = {"workload": "SmolLM2-135M batch generation", "unit": "tokens/s", "prompts": n_prompts,
                              "new_tokens": new_tokens, "device": device, "fastx": made[-1] / seconds, "peer": None}  # fmt: skip
    if not _have("transformers") or not _have("gguf"):
        log("generation: transformers (and gguf) not installed; fastx alone is timed")
        return result
    if quick:  # transformers de-quantizes the whole GGUF on load: tens of seconds on a CPU
        log("generation: --quick times fastx alone (the transformers peer runs without --quick)")
        return result
    import transformers

    folder, name = os.path.split(model_path)
    kwargs = {"gguf_file": name} if name.lower().endswith(".gguf") else {}
    source = folder if kwargs else model_path
    tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    theirs = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).to(device).eval()
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)

    @torch.inference_mode()
    def run_transformers():
        theirs.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                        pad_token_id=tok.pad_token_id)  # fmt: skip

    result["peer"] = n_prompts * new_tokens / _best_time(run_transformers, 1 if quick else 2, sync)
    result["peer_name"] = f"transformers {transformers.__version__}"
    return result


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib is optional)
# ---------------------------------------------------------------------------------------------
def plot_sweeps(rows: list[dict[str, Any]], out_dir: str) -> list[str]:
    """One PNG per op: achieved GB/s or TFLOP/s of fastx and its peer over the sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for op in dict.fromkeys(r["op"] for r in rows):
        sel = [r for r in rows if r["op"] == op]
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["x"] for r in sel]
        ax.plot(xs, [r["fastx_rate"] for r in sel], "o-", label="fastx (Triton)")
        ax.plot(xs, [r["peer_rate"] for r in sel], "s--", label=sel[0]["peer"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size (" + sel[0]["size"].split("=")[0] + ")" if "=" in sel[0]["size"] else "features per row")
        ax.set_ylabel(sel[0]["metric"])
        ax.set_title(f"{op} on {sel[0]['device']} ({sel[0]['dtype']})")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = os.path.join(out_dir, f"{op}.png")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Kernel self-check: Triton path vs eager PyTorch, fastx.testing's rule
# ---------------------------------------------------------------------------------------------
def _check_cases(device: str) -> dict[str, Callable]:
    """op name -> make(dtype) returning (run(*args), args); run calls fastx.ops on the current backend."""
    import torch

    import fastx.ops as ops

    def randn(*shape, dtype):
        return torch.randn(*shape, device=device, dtype=dtype)

    def norm_case(shape, strided=False):
        def make(dtype):
            n = shape[-1]
            x = randn(shape[0], 2 * n, dtype=dtype)[:, ::2] if strided else randn(*shape, dtype=dtype)
            return x, randn(n, dtype=dtype), randn(n, dtype=dtype), randn(*x.shape, dtype=dtype)

        return make

    def rope(dtype):
        t, h, k, d = 5, 3, 2, 32
        angles = torch.arange(16, device=device)[:, None] * (1.0 / 10000.0 ** (torch.arange(0, d, 2, device=device) / d))
        pos = torch.tensor([0, 3, 15, 7, 1], device=device)
        return randn(t, h, d, dtype=dtype), randn(t, k, d, dtype=dtype), angles.cos(), angles.sin(), pos

    def paged(dtype):
        s, h, k, d, bs, nb = 2, 4, 2, 32, 16, 6
        tables = torch.tensor([[4, 1, 0], [2, 5, 3]], dtype=torch.int32, device=device)
        lens = torch.tensor([5, 37], dtype=torch.int32, device=device)
        caches = randn(nb, bs, k, d, dtype=dtype), randn(nb, bs, k, d, dtype=dtype)
        new_kv = randn(3, k, d, dtype=dtype), randn(3, k, d, dtype=dtype)  # 3 tokens to write first
        return randn(s, h, d, dtype=dtype), *caches, tables, lens, *new_kv

    def varlen(dtype):
        cu = torch.tensor([0, 7, 20], dtype=torch.int32, device=device)
        return randn(20, 4, 32, dtype=dtype), randn(20, 2, 32, dtype=dtype), randn(20, 2, 32, dtype=dtype), cu

    def with_kv_write(q, k_cache, v_cache, tables, lens, key, value):
        kc, vc = k_cache.clone(), v_cache.clone()
        ops.write_kv_cache(key, value, kc, vc, torch.tensor([2, -1, 40], device=q.device))
        return ops.paged_decode_attention(q, kc, vc, tables, lens), kc

    def two(shape_a, shape_b, build):
        return [lambda dtype: build(shape_a, dtype), lambda dtype: build(shape_b, dtype)]

    return {
        "layer_norm": (lambda x, w, b, r: ops.layer_norm(x, x.shape[-1:], w, b), [norm_case((1, 1)), norm_case((7, 37)), norm_case((3, 300), True)]),
        "add_layer_norm": (lambda x, w, b, r: ops.add_layer_norm(x, r, x.shape[-1:], w, b), [norm_case((5, 130))]),
        "rms_norm": (lambda x, w, b, r: ops.rms_norm(x, x.shape[-1:], w, 1e-6), [norm_case((1, 1)), norm_case((7, 37)), norm_case((3, 300), True)]),
        "add_rms_norm": (lambda x, w, b, r: ops.add_rms_norm(x, r, x.shape[-1:], w, 1e-6), [norm_case((5, 130))]),
        "gelu": (lambda x: (ops.gelu(x), ops.gelu(x, approximate="tanh")), two((1,), (7, 37), lambda s, dt: (randn(*s, dtype=dt),))),
        "bias_gelu": (lambda x, b: ops.bias_gelu(x, b), two((1, 3), (7, 37), lambda s, dt: (randn(*s, dtype=dt), randn(s[-1], dtype=dt)))),
        "silu": (lambda x: ops.silu(x), two((1,), (7, 37), lambda s, dt: (randn(*s, dtype=dt),))),
        "silu_and_mul": (lambda x: ops.silu_and_mul(x), two((1, 2), (7, 74), lambda s, dt: (randn(*s, dtype=dt),))),
        "rotary_embedding": (lambda q, k, c, s, p: ops.rotary_embedding(q, k, c, s, p), [rope]),
        "scaled_dot_product_attention": (
            lambda q, k, v: (ops.scaled_dot_product_attention(q, k, v), ops.scaled_dot_product_attention(q, k, v, is_causal=True)),
            [lambda dt: tuple(randn(1, 2, 17, 32, dtype=dt) for _ in range(3))]),
        "varlen_attention": (lambda q, k, v, cu: ops.varlen_attention(q, k, v, cu, cu, 13, 13, causal=True), [varlen]),
        "conv2d (depthwise)": (lambda x, w, b: ops.conv2d(x, w, b, padding=1, groups=x.shape[1]),
                               [lambda dt: (randn(1, 6, 5, 7, dtype=dt), randn(6, 1, 3, 3, dtype=dt), randn(6, dtype=dt))]),
        "paged_decode_attention": (with_kv_write, [paged]),
    }  # fmt: skip


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def self_check(device: str, dtypes: list[str] | None = None, log: Callable[[str], None] = print) -> bool:
    """Run every op on the Triton path and eagerly; log one PASS/FAIL line per op; True if all pass.

    On a CPU, TRITON_INTERPRET=1 must have been set before fastx.kernels was imported.
    """
    import torch

    from fastx.testing import assert_matches_reference

    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    chosen = [names[d] for d in (dtypes or ["fp32", "fp16", "bf16"])]
    all_ok = True
    for op, (run, makers) in _check_cases(device).items():
        failures, cases, start = [], 0, time.perf_counter()
        for dtype in chosen:
            for make in makers:
                torch.manual_seed(0)
                args = make(dtype)
                # fp64 reference inputs; the KV-cache ops accept kernel dtypes only, fp32 is their reference.
                ref = torch.float32 if op == "paged_decode_attention" else torch.float64
                ref_args = tuple(a.to(ref) if a.is_floating_point() else a for a in args)
                try:
                    with backend("triton"):
                        actual = _as_tuple(run(*args))
                    with backend("torch"):
                        eager = _as_tuple(run(*args))
                        reference = _as_tuple(run(*ref_args))
                    for i, (a, r, e) in enumerate(zip(actual, reference, eager)):
                        what = f"{op} {str(dtype).removeprefix('torch.')} {tuple(args[0].shape)} output {i}"
                        assert_matches_reference(a, r, e, what=what)
                except Exception as exc:  # a crash of the kernel is a failure of the check, not of the command
                    failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                cases += 1
        seconds = time.perf_counter() - start
        if failures:
            all_ok = False
            log(f"FAIL  {op:<30} {len(failures)}/{cases} cases: {failures[0]}")
        else:
            log(f"pass  {op:<30} {cases} cases ({seconds:.1f} s)")
    return all_ok
