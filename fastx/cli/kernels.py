"""`fastx kernels`: the ahead-of-time compile report for sm_80/sm_90, or `--check` the kernels' numerics here."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from fastx.cli.common import UsageError, check_dtypes, in_interpreter_child, rerun, rerun_under_interpreter
from fastx.kernels import interpreter_enabled
from fastx.kernels.report import format_table, parse_targets


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


NAME = "kernels"
HELP = "compile report for sm_80/sm_90, or --check the kernels' numerics"
DESCRIPTION = (
    "Without --check: compile every kernel configuration for NVIDIA GPUs ahead of time\n"
    "(no GPU needed) and report registers, spills and shared memory; exits 1 when a\n"
    "row breaks its target's limits.\n"
    "With --check: run each fastx.ops op through its Triton kernel and through eager\n"
    "PyTorch on a few shapes and dtypes (the CPU uses Triton's interpreter); exits 1\n"
    "when any op fails."
)
EPILOG = (
    "examples:\n  fastx kernels --target sm_90\n  fastx kernels --only rms_norm --json\n"
    "  fastx kernels --check --dtype fp32,bf16"
)


def add_arguments(parser) -> None:
    parser.add_argument("--target", type=parse_targets, default=(80, 90), help="sm_80,sm_90 (default both)")
    parser.add_argument("--json", action="store_true", help="print the report as a JSON list")
    parser.add_argument(
        "--only",
        type=_comma_list,
        default=None,
        metavar="NAMES",
        help="compile only kernels whose name or module contains one of these (comma list: rotary,norm)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: CPU count)")
    parser.add_argument("--check", action="store_true", help="run the correctness self-check instead of the report")
    parser.add_argument("--dtype", default=None, help="with --check: fp32,fp16,bf16 (default all three)")


# -- the compile report ----------------------------------------------------------------------------
def _selected_configs(only: list[str] | None):
    from fastx.kernels.aot import configs_by_module

    # A configuration matches by its kernel's name or the name of the module listing it
    # (`--only rms_norm` selects rms_norm.py's configurations of layer_norm.py's kernel).
    return [
        c
        for module, configs in configs_by_module().items()
        for c in configs
        if not only or any(o in n for o in only for n in (c.name, module))
    ]


def _compile_selected(job) -> dict[str, Any]:
    """Pool job: compile the index-th selected configuration (a spawned process re-derives the list)."""
    from fastx.kernels.aot import compile_config

    only, index, arch = job
    return compile_config(_selected_configs(only)[index], arch)


def _compile_rows(targets, only, jobs) -> list[dict[str, Any]]:
    if not only:
        from fastx.kernels.aot import compile_all

        return compile_all(targets, jobs)
    n = len(_selected_configs(only))
    if n == 0:
        raise UsageError(f"--only {','.join(only)}: matches no kernel")
    work = [(only, i, arch) for i in range(n) for arch in targets]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    if jobs <= 1:
        return [_compile_selected(w) for w in work]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_compile_selected, work))


def _report(args) -> int:
    if interpreter_enabled():  # the compile report cannot run under the interpreter: a fresh process without it
        argv = ["kernels", "--target", ",".join(f"sm_{t}" for t in args.target)]
        argv += (["--json"] if args.json else []) + (["--only", ",".join(args.only)] if args.only else [])
        argv += ["--jobs", str(args.jobs)] if args.jobs else []
        return rerun(argv, {"TRITON_INTERPRET": None, "FASTX_BACKEND": None})
    rows = _compile_rows(args.target, args.only, args.jobs)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        print(format_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


# -- the self-check ----------------------------------------------------------------------------------
def _self_check(dtypes: list[str] | None) -> int:
    import torch

    from fastx.testing import make_interpreter_round_like_gpu, self_check

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        make_interpreter_round_like_gpu()  # judge the kernel, not the interpreter's bf16 rounding
        print("kernel self-check on the CPU, in Triton's interpreter (a GPU runs the same check natively)")
    else:
        print(f"kernel self-check on {torch.cuda.get_device_name()}")
    ok = self_check(device, dtypes)
    print("all kernels match eager PyTorch" if ok else "some kernels FAILED")
    return 0 if ok else 1


def _check(args, dtypes: list[str] | None) -> int:
    import torch

    if torch.cuda.is_available() or in_interpreter_child():
        return _self_check(dtypes)
    return rerun_under_interpreter(["kernels", "--check"] + (["--dtype", args.dtype] if args.dtype else []))


def run(args) -> int:
    dtypes = check_dtypes(args.dtype)
    return _check(args, dtypes) if args.check else _report(args)
