"""`fastx info`: versions, device, the backend fastx.ops uses, and whether the default models are installed."""

from __future__ import annotations

import json
import os
import sys

from fastx.cli.common import device_name, package_version

NAME = "info"
HELP = "versions, device, backend and default models"
DESCRIPTION = (
    "Show fastx, torch, triton, transformers and Python versions, the device, the\n"
    "backend fastx.ops uses, and whether the default models are installed."
)
EPILOG = None


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object")


def _backend_description() -> str:
    import torch

    setting = os.environ.get("FASTX_BACKEND", "auto").strip().lower() or "auto"
    if setting == "torch":
        return "eager PyTorch (FASTX_BACKEND=torch)"
    if setting == "triton":
        where = "on the GPU" if torch.cuda.is_available() else "in Triton's CPU interpreter (slow; for testing)"
        return f"Triton kernels {where} (FASTX_BACKEND=triton)"
    if setting != "auto":
        return f"invalid FASTX_BACKEND={setting!r} (expected auto, triton or torch)"
    if torch.cuda.is_available():
        return "Triton kernels on CUDA tensors (auto)"
    return "eager PyTorch on the CPU (auto; FASTX_BACKEND=triton runs the kernels in Triton's interpreter)"


def run(args) -> int:
    import platform

    import torch

    from fastx.checkpoints.defaults import EMBEDDING_INSTALL, GENERATION_INSTALL, installed_defaults

    models = installed_defaults()
    info = {
        "fastx": package_version("fastx") or __import__("fastx").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "transformers": package_version("transformers"),
        "device": device_name(),
        "backend": _backend_description(),
        "generation_model": models["generation"],
        "embedding_model": models["embedding"],
    }
    if args.json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return 0
    missing = {
        "generation_model": f"not installed ({GENERATION_INSTALL})",
        "embedding_model": f"not installed ({EMBEDDING_INSTALL})",
        "transformers": "not installed (optional: the peer of `fastx bench`)",
        "triton": "not installed",
    }
    for key, value in info.items():
        print(f"{key.replace('_', ' '):<17} {value if value is not None else missing.get(key, '-')}")
    return 0
