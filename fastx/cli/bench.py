"""`fastx bench`: kernel sweeps on a GPU, end-to-end fastx against transformers anywhere; JSON and PNGs."""

from __future__ import annotations

import json
import os
from typing import Any

from fastx.cli.common import default_out_dir, device_name, display_path, package_version

NAME = "bench"
HELP = "benchmark kernels and end-to-end workloads"
DESCRIPTION = (
    "Benchmark fastx in this process.\n\n"
    "kernels: each Triton kernel vs eager PyTorch over a sweep of sizes (CUDA only;\n"
    "  GB/s or TFLOP/s from the byte/FLOP formula, %% of the GPU's peak when known).\n"
    "e2e: all-MiniLM-L6-v2 embeddings (sentences/s) and SmolLM2 batch generation\n"
    "  (tokens/s), fastx vs transformers when it is installed.\n"
    "serve: streaming chat clients at concurrency 1, 4, 16 against `fastx serve` (on a CPU\n"
    "  also with --pack-weights), then `transformers serve --continuous-batching` on the\n"
    "  same SmolLM2 weights\n"
    "  (requests/s, output tokens/s, time to first token and inter-token p50/p99).\n"
    "Writes OUT/bench.json, and PNG plots of the sweeps when matplotlib is installed."
)
EPILOG = (
    "examples:\n  fastx bench\n  fastx bench kernels --out results/\n  fastx bench e2e --quick\n  fastx bench serve"
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "what",
        nargs="?",
        choices=("kernels", "e2e", "serve", "all"),
        default="all",
        help="which benchmarks (default all: kernels and e2e; serve starts servers and runs alone)",
    )
    parser.add_argument(
        "--out",
        default=default_out_dir("bench"),
        help=f"output folder (default {display_path(default_out_dir('bench'))}, said when written)",
    )
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")


def _e2e_row(r: dict[str, Any]) -> str:
    peer = f"{r['peer']:.1f}" if r.get("peer") else "-"
    ratio = f"{r['fastx'] / r['peer']:.2f}x" if r.get("peer") else "-"
    return f"{r['workload']:<34} {r['device']:<6} {r['fastx']:>10.1f} {peer:>10} {ratio:>7}  {r['unit']}"


def _run_kernels(report: dict[str, Any], device: str, quick: bool) -> None:
    from fastx.cli import bench_kernels

    print("== kernels: fastx (Triton) vs eager PyTorch, bf16; ratio = peer time / fastx time")
    if device != "cuda":
        print(f"skipped: {bench_kernels.NEEDS_CUDA}. `fastx kernels --check` verifies them here.")
        return
    print(bench_kernels.KERNEL_HEADER)
    report["kernels"] = bench_kernels.kernel_sweeps(quick)


def _run_e2e(report: dict[str, Any], device: str, quick: bool) -> None:
    from fastx.checkpoints.defaults import default_embedding_model, default_generation_model
    from fastx.cli import bench_e2e

    print(f"== end to end ({device}); ratio = fastx / peer")
    if quick:
        print("--quick: smoke-run sizes (a few sentences, 2 prompts x 4 tokens); these figures are not measurements")
    print(f"{'workload':<34} {'device':<6} {'fastx':>10} {'peer':>10} {'ratio':>7}  unit")
    workloads = (
        (default_embedding_model, bench_e2e.e2e_embeddings),
        (default_generation_model, bench_e2e.e2e_generation),
    )
    for find_model, workload in workloads:
        try:
            model = find_model()
        except OSError as exc:
            print(f"skipped: {exc}")
            continue
        row = workload(model, device, quick)
        report["e2e"].append(row)
        print(_e2e_row(row), flush=True)


def write_plots(rows: list[dict[str, Any]], out: str) -> list[str]:
    """PNGs of the kernel sweep rows in `out` (none, with a note, when matplotlib is missing)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib to get PNGs of the sweeps)")
        return []
    from fastx.cli.bench_kernels import plot_sweeps

    paths = plot_sweeps(rows, out)
    for png in paths:
        print(f"wrote {png}")
    return paths


def run(args) -> int:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict[str, Any] = {
        "fastx": package_version("fastx"),
        "torch": torch.__version__,
        "device": device_name(),
        "quick": args.quick,
        "kernels": [],
        "e2e": [],
    }
    if args.what in ("kernels", "all"):
        _run_kernels(report, device, args.quick)
    if args.what in ("e2e", "all"):
        _run_e2e(report, device, args.quick)
    if args.what == "serve":
        from fastx.checkpoints.defaults import default_generation_model
        from fastx.cli.bench_serve import bench_serve

        print("== serve: streaming chat clients against fastx serve and transformers serve (same model), alternating")
        report["serve"] = bench_serve(default_generation_model(), device, args.quick)
    out = args.out
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "bench.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")
    if report["kernels"]:
        write_plots(report["kernels"], out)
    return 0
