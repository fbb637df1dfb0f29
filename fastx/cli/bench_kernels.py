"""The kernel sweeps of `fastx bench kernels`, shipped inside the package (bench/ is not installed).

Each fastx kernel (through fastx.ops, forced onto the Triton path) against eager PyTorch over a
sweep of sizes, timed with triton.testing.do_bench on CUDA; GB/s or TFLOP/s from the byte / FLOP
formula written beside each sweep, and % of the GPU's peak where it is known; one PNG per op.

Legend: T = tokens, H = query heads, K = kv heads, D = head dim, L = sequence length,
S = sequences, N = features per row.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
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


def _rotary_pair_eager(q, k, cos, sin, positions):
    return _rotary_eager(q, cos, sin, positions), _rotary_eager(k, cos, sin, positions)


def _silu_and_mul_eager(x):  # (rows, 2d) -> (rows, d)
    import torch.nn.functional as F

    d = x.shape[-1] // 2
    return F.silu(x[:, :d]) * x[:, d:]


def _paged_decode_eager(q, k_cache, v_cache, tables, context: int):
    """Gather each sequence's blocks into a dense (S, K, L, D) tensor, then SDPA: what eager PyTorch would do."""
    import torch.nn.functional as F

    seqs, (_, _, kv_heads, head_dim) = q.shape[0], k_cache.shape  # k_cache (N, P, K, D)
    kk = k_cache[tables.long()].reshape(seqs, -1, kv_heads, head_dim)[:, :context].transpose(1, 2)
    vv = v_cache[tables.long()].reshape(seqs, -1, kv_heads, head_dim)[:, :context].transpose(1, 2)
    return F.scaled_dot_product_attention(q[:, :, None], kk, vv, enable_gqa=True)[:, :, 0]


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
        yield Case(
            "layer_norm",
            f"{rows}x{n}",
            n,
            partial(ops.layer_norm, x, (n,), w, b),
            partial(F.layer_norm, x, (n,), w, b),
            "torch",
            bytes_moved=rows * n * e * 2 + 2 * n * e,
        )
        yield Case(
            "rms_norm",
            f"{rows}x{n}",
            n,
            partial(ops.rms_norm, x, (n,), w, 1e-6),
            partial(F.rms_norm, x, (n,), w, 1e-6),
            "torch",
            bytes_moved=rows * n * e * 2 + n * e,
        )

    # GELU: bytes = rows * N * elem * 2.
    for n in [3072] if quick else [1024, 3072, 11008, 16384]:
        x = torch.randn(rows, n, device=device, dtype=dt)
        yield Case(
            "gelu", f"{rows}x{n}", n, partial(ops.gelu, x), partial(F.gelu, x), "torch", bytes_moved=rows * n * e * 2
        )

    # SiLU-and-mul (SwiGLU gate): input (rows, 2d) -> (rows, d); bytes = rows * d * elem * 3.
    for d in [2048] if quick else [2048, 5632, 11008, 14336]:
        x = torch.randn(rows, 2 * d, device=device, dtype=dt)
        yield Case(
            "silu_and_mul",
            f"{rows}x{d}",
            d,
            partial(ops.silu_and_mul, x),
            partial(_silu_and_mul_eager, x),
            "torch",
            bytes_moved=rows * d * e * 3,
        )

    # Rotary on q (T, 32, 128) and k (T, 8, 128): bytes = T * (H + K) * D * elem * 2 + 2 * T * D/2 * 4.
    for t in [1024] if quick else [1024, 4096, 16384]:
        h, k, d = 32, 8, 128
        q, kk = torch.randn(t, h, d, device=device, dtype=dt), torch.randn(t, k, d, device=device, dtype=dt)
        angles = torch.arange(t, device=device)[:, None] * (1.0 / 10000.0 ** (torch.arange(0, d, 2, device=device) / d))
        cos, sin, pos = angles.cos(), angles.sin(), torch.arange(t, device=device)
        yield Case(
            "rotary",
            f"T={t}",
            t,
            partial(ops.rotary_embedding, q, kk, cos, sin, pos),
            partial(_rotary_pair_eager, q, kk, cos, sin, pos),
            "torch",
            bytes_moved=t * (h + k) * d * e * 2 + 2 * t * (d // 2) * 4,
        )

    # Causal attention forward, B * L = 16k tokens (4k quick), H * D = 2048, D = 128:
    # FLOPs = 4 * B * H * L^2 * D / 2 (two matmuls, lower triangle only). Peer: torch SDPA (FlashAttention-2).
    total = 4096 if quick else 16384
    for seq in [512, 2048] if quick else [512, 1024, 2048, 4096, 8192]:
        batch, heads, d = total // seq, 16, 128
        q, k, v = (torch.randn(batch, heads, seq, d, device=device, dtype=dt) for _ in range(3))
        yield Case(
            "attention",
            f"L={seq}",
            seq,
            partial(ops.scaled_dot_product_attention, q, k, v, is_causal=True),
            partial(F.scaled_dot_product_attention, q, k, v, is_causal=True),
            "torch SDPA",
            flops=4 * batch * heads * seq * seq * d // 2,
        )

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
        yield Case(
            "paged_decode",
            f"S={seqs},L={context}",
            seqs,
            partial(ops.paged_decode_attention, q, k_cache, v_cache, tables, lens, max_context_len=context),
            partial(_paged_decode_eager, q, k_cache, v_cache, tables, context),
            "gather + SDPA",
            bytes_moved=2 * seqs * context * kvh * d * e + 2 * seqs * h * d * e,
        )


def kernel_sweeps(quick: bool, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time every Case on CUDA; one result row per case."""
    import torch
    from triton.testing import do_bench

    from fastx.ops._backend import forced_backend

    name = torch.cuda.get_device_name()
    peak_gbps, peak_tflops = gpu_peaks(name)
    warmup, rep = (5, 20) if quick else (25, 100)
    rows = []
    with forced_backend("triton"):
        for case in kernel_cases(quick):
            fastx_ms = do_bench(case.fastx, warmup=warmup, rep=rep)
            with forced_backend("torch"):
                peer_ms = do_bench(case.peer, warmup=warmup, rep=rep)
            if case.bytes_moved is not None:
                metric, amount, peak = "GB/s", case.bytes_moved / 1e9, peak_gbps
            else:
                metric, amount, peak = "TFLOP/s", case.flops / 1e12, peak_tflops
            rate = amount / (fastx_ms / 1e3)
            row = {
                "op": case.family,
                "size": case.size,
                "x": case.x,
                "device": name,
                "dtype": "bf16",
                "fastx_ms": fastx_ms,
                "peer": case.peer_name,
                "peer_ms": peer_ms,
                "ratio": peer_ms / fastx_ms,
                "metric": metric,
                "fastx_rate": rate,
                "peer_rate": amount / (peer_ms / 1e3),
                "pct_of_peak": 100.0 * rate / peak if peak else None,
                "bytes": case.bytes_moved,
                "flops": case.flops,
            }
            rows.append(row)
            log(format_kernel_row(row))
            del case
            torch.cuda.empty_cache()
    return rows


KERNEL_HEADER = f"{'op':<13} {'size':<14} {'fastx ms':>9} {'peer ms':>9} {'ratio':>6} {'rate':>16} {'% peak':>7}  peer"


def format_kernel_row(r: dict[str, Any]) -> str:
    pct = f"{r['pct_of_peak']:.0f}%" if r.get("pct_of_peak") is not None else "-"
    rate = f"{r['fastx_rate']:.1f} {r['metric']}"
    return (
        f"{r['op']:<13} {r['size']:<14} {r['fastx_ms']:>9.4f} {r['peer_ms']:>9.4f} {r['ratio']:>5.2f}x "
        f"{rate:>16} {pct:>7}  {r['peer']}"
    )


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
