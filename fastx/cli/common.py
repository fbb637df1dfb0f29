"""What several `fastx` commands share: the error type, progress notes, prompt files, the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROG = "fastx"


class UsageError(Exception):
    """A wrong command line found after parsing (exit 2)."""


def status(message: str) -> None:
    """A progress note for people at a terminal; scripts reading stderr get nothing extra."""
    if sys.stderr.isatty():
        sys.stderr.write(f"{PROG}: {message}\n")


def default_device() -> str:
    """cuda when available, else cpu (the dtype then follows the device: fastx.models.dtypes)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    return "CPU"


def package_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def read_prompt_file(path: str) -> list[str]:
    """One prompt per line, or JSONL lines {"prompt": ...}; blank lines are skipped; "-" is stdin."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--file {path}, line {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f'--file {path}, line {number}: expected an object with a string "prompt" field')
            prompts.append(record["prompt"])
        else:
            prompts.append(line)
    return prompts


def check_dtypes(text: str | None) -> list[str] | None:
    """--dtype of the kernel checks: a comma list of fp32, fp16, bf16 (None: the command's default)."""
    dtypes = text.split(",") if text else None
    if dtypes and not set(dtypes) <= {"fp32", "fp16", "bf16"}:
        raise UsageError(f"--dtype: expected a comma list of fp32, fp16, bf16, got {text!r}")
    return dtypes


def rerun(argv: list[str], env_changes: dict[str, str | None]) -> int:
    """Run `python -m fastx ARGV` in a fresh process with a changed environment (interpreter on/off)."""
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    sys.stdout.flush()
    return subprocess.call([sys.executable, "-m", "fastx", *argv], env=env)


def in_interpreter_child() -> bool:
    """True in the process `rerun_under_interpreter` started (the kernels may run on the CPU here)."""
    from fastx.kernels import interpreter_enabled

    return interpreter_enabled() and bool(os.environ.get("_FASTX_CHECK_CHILD"))


def rerun_under_interpreter(argv: list[str]) -> int:
    """Run `python -m fastx ARGV` with Triton's interpreter on: it must be chosen before any kernel
    module is imported, so a CPU-only check runs in a fresh process."""
    return rerun(argv, {"TRITON_INTERPRET": "1", "FASTX_BACKEND": None, "_FASTX_CHECK_CHILD": "1"})
