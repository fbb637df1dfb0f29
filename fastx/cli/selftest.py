"""`fastx selftest`: the checks a first GPU session runs, in one command, with a JSON report.

1. every kernel against eager PyTorch (fastx.testing.self_check): natively on a GPU, in Triton's
   interpreter on a CPU;
2. greedy generation of a tiny random Llama (GQA) built with transformers: fastx's paged engine
   against transformers' `generate`, token for token, in fp32 on this device; on CUDA both with
   the captured decode graphs and with enforce_eager, and the two against each other in bf16;
3. on CUDA only, the kernel benchmark sweep (fastx vs eager PyTorch / torch SDPA, GB/s or TFLOP/s
   and % of the GPU's peak) with PNG plots;
4. on CUDA, from a source checkout (tests/ beside the package), the test suite's kernel, ops,
   model and engine tests on the GPU (--no-suite skips them).
Exits 1 when a check fails. Time on a CPU: about 15 s (one dtype by default there).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from fastx.cli.bench import write_plots
from fastx.cli.common import (
    check_dtypes,
    default_out_dir,
    device_name,
    display_path,
    in_interpreter_child,
    package_version,
    rerun_under_interpreter,
)

NAME = "selftest"
HELP = "kernel numerics, greedy tokens vs transformers, kernel sweep (GPU); JSON report"
DESCRIPTION = __doc__.split("\n\n", 1)[1]
EPILOG = "examples:\n  fastx selftest\n  fastx selftest --out results/ --dtype fp32,bf16"
GREEDY_TOKENS = 32


def add_arguments(parser) -> None:
    parser.add_argument(
        "--out",
        default=default_out_dir("selftest"),
        help=f"report folder (default {display_path(default_out_dir('selftest'))}, said when written)",
    )
    parser.add_argument("--dtype", default=None, help="kernel check dtypes (default: all three on CUDA, fp32 on a CPU)")
    parser.add_argument("--quick", action="store_true", help="on CUDA: the short benchmark sweep")
    parser.add_argument("--no-suite", action="store_true", help="on CUDA: skip the test suite's device tests")


def _greedy_tokens(device: str) -> dict[str, Any]:
    """A tiny GQA Llama: fastx LLM (paged engine) vs transformers' generate, 32 greedy tokens per prompt."""
    try:
        import transformers
    except ImportError:
        return {"ok": None, "skipped": "transformers is not installed (pip install transformers)"}
    import torch

    from fastx import LLM, SamplingParams

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=300,
        hidden_size=80,
        intermediate_size=200,
        num_hidden_layers=3,
        num_attention_heads=5,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    reference = transformers.LlamaForCausalLM(config).eval()
    prompts = [[1, 17, 42, 99, 7], [3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 77]]
    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True)
    # (dtype, enforce_eager): graphs exist on CUDA only, so a CPU runs the eager fp32 engine alone.
    runs = [("float32", True)] + (
        [("float32", False), ("bfloat16", True), ("bfloat16", False)] if device == "cuda" else []
    )
    ours = {}
    with tempfile.TemporaryDirectory() as folder:
        reference.save_pretrained(folder)
        for dtype, eager in runs:
            llm = LLM(
                folder, dtype=dtype, device=device, skip_tokenizer_init=True, num_kv_blocks=64, enforce_eager=eager
            )
            ours[(dtype, eager)] = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    theirs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([prompt])
            out = reference.generate(ids, max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS, do_sample=False)
            theirs.append(out[0, len(prompt) :].tolist())
    eager = ours[("float32", True)]
    first_difference = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(eager, theirs)]
    result = {
        "ok": eager == theirs,
        "prompts": len(prompts),
        "tokens": GREEDY_TOKENS,
        "first_difference": first_difference,
    }
    if device == "cuda":
        result["fp32_graphs_equal_transformers"] = ours[("float32", False)] == theirs
        result["bf16_graphs_equal_bf16_eager"] = ours[("bfloat16", False)] == ours[("bfloat16", True)]
        result["ok"] = (
            result["ok"] and result["fp32_graphs_equal_transformers"] and result["bf16_graphs_equal_bf16_eager"]
        )
    return result


def _device_suite(timeout_s: int) -> dict[str, Any]:
    """The test suite's device tests on this GPU, when tests/ sits beside the package (a checkout)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fastx/cli/ -> root
    tests = os.path.join(root, "tests")
    if not os.path.isdir(tests):
        return {"ok": None, "skipped": "no tests/ folder beside the package (installed from a wheel)"}
    folders = [os.path.join(tests, name) for name in ("kernels", "ops", "models", "engine")]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *folders]
    try:
        proc = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s} s"}
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"ok": proc.returncode == 0, "summary": summary, "tail": proc.stdout[-3000:]}


def run(args) -> int:
    import torch

    requested = check_dtypes(args.dtype)  # a bad flag fails before anything runs
    cuda = torch.cuda.is_available()
    if not cuda and not in_interpreter_child():
        argv = ["selftest", "--out", args.out] + (["--dtype", args.dtype] if args.dtype else [])
        return rerun_under_interpreter(argv + (["--quick"] if args.quick else []))
    from fastx.testing import make_interpreter_round_like_gpu, self_check

    start = time.perf_counter()
    device = "cuda" if cuda else "cpu"
    dtypes = requested or (None if cuda else ["fp32"])
    report: dict[str, Any] = {"fastx": package_version("fastx"), "torch": torch.__version__, "device": device_name()}
    print(f"== kernels vs eager PyTorch on {report['device']}" + ("" if cuda else " (Triton's interpreter)"))
    if not cuda:
        make_interpreter_round_like_gpu()  # judge the kernels, not the interpreter's bf16 rounding
    lines: list[str] = []
    report["kernels_ok"] = self_check(device, dtypes, log=lambda line: (lines.append(line), print(line)))
    report["kernel_checks"] = lines
    print(f"== greedy tokens: fastx paged engine vs transformers ({device})")
    report["greedy"] = _greedy_tokens(device)
    print(json.dumps(report["greedy"]))
    report["sweep"] = []
    os.makedirs(args.out, exist_ok=True)
    if cuda:
        from fastx.cli import bench_kernels

        print("== kernel sweep: fastx (Triton) vs eager PyTorch / torch SDPA, bf16")
        print(bench_kernels.KERNEL_HEADER)
        report["sweep"] = bench_kernels.kernel_sweeps(args.quick)
        report["plots"] = write_plots(report["sweep"], args.out)
    report["suite"] = (
        {"ok": None, "skipped": "CPU: CI runs the suite"} if not cuda else {"ok": None, "skipped": "--no-suite"}
    )
    if cuda and not args.no_suite:
        print("== the test suite's device tests on this GPU")
        report["suite"] = _device_suite(timeout_s=300)
        print(report["suite"].get("summary") or report["suite"])
    report["seconds"] = time.perf_counter() - start
    path = os.path.join(args.out, "selftest.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    ok = report["kernels_ok"] and report["greedy"]["ok"] is not False and report["suite"]["ok"] is not False
    print(f"wrote {path}; {'all checks passed' if ok else 'some checks FAILED'} in {report['seconds']:.0f} s")
    return 0 if ok else 1
