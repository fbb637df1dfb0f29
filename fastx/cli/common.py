"""What several `fastx` commands share: the error type, progress notes, prompt files, the device,
the model and sampling flags of `generate` and `chat` (fastx.cli.llm_flags)."""

from __future__ import annotations

import contextlib
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


def note(message: str) -> None:
    """A line on stderr whether or not it is a terminal (loading, the speed summary); --quiet drops it."""
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


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
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"--file {path}: expected UTF-8 text, got byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        ) from None
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
    if not prompts:
        raise ValueError(f"--file {path}: the file is empty (expected one prompt per line)")
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


# -- the model and sampling flags of `generate` and `chat` (and a future `serve`) ------------------
# Names and meanings follow vLLM's (`--dtype`, `--top-k`, `--repetition-penalty`) and llama.cpp's
# (`-n`/`--n-predict`, `--threads`, `--system-prompt`, `--repeat-penalty`) where they have one.
DTYPE_CHOICES = ("auto", "float32", "float", "float16", "half", "bfloat16")
# fastx.models.quantization.QUANTIZATIONS, spelled out so that parsing flags imports no torch (a test keeps them equal)
QUANTIZATIONS = ("int8", "int4")
QUANTIZATION_HELP = "CPU: int8 / int4 weight-only GEMMs, faster decode, approximate (int4 keeps a GGUF's 4-bit values)"


def add_llm_arguments(parser) -> None:
    """--model, --device, --dtype, --threads, --quantization, --pack-weights, --seed, --quiet: loading the model."""
    parser.add_argument(
        "--model", "-m", help="Hub id, checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--device", default="auto", help='"auto" (cuda when available, else cpu), "cpu", "cuda:1"')
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="weights' dtype (default: the device's: bf16 on CUDA and AMX CPUs, else fp32; auto: the checkpoint's)",
    )
    parser.add_argument("--threads", "-t", type=int, help="CPU threads for torch (torch.set_num_threads)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, help=QUANTIZATION_HELP)
    parser.add_argument(
        "--pack-weights", action="store_true", help="fp32 on the CPU: oneDNN-packed weights, faster batches, 2x memory"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible runs)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no loading line and no speed summary on stderr")
    parser.add_argument(
        "--tensor-parallel-size", "-tp", type=int, default=1, help="split the model across N processes (default 1)"
    )


def add_sampling_arguments(parser, max_tokens: int) -> None:
    """--max-tokens/-n, --temperature, --top-p, --top-k, --repetition-penalty, --stop, --system."""
    parser.add_argument(
        "--max-tokens",
        "-n",
        "--n-predict",
        dest="max_tokens",
        type=int,
        default=max_tokens,
        help=f"new tokens per answer at most; -1: until the end of text or the context (default {max_tokens})",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    parser.add_argument("--top-k", type=int, default=-1, help="sample among the k likeliest tokens; -1: all (default)")
    parser.add_argument(
        "--repetition-penalty",
        "--repeat-penalty",
        dest="repetition_penalty",
        type=float,
        default=1.0,
        help="> 1 discourages tokens already in the prompt or the answer (vLLM's; default 1: off)",
    )
    parser.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="end an answer at TEXT (repeatable; not printed)"
    )
    parser.add_argument(
        "--system", "--system-prompt", dest="system", help="system message put before the prompt in the chat template"
    )


def sampling_params(args):
    """SamplingParams from the flags, before the model loads; a bad value is a usage error naming the flag."""
    from fastx.engine.sampling_params import SamplingParams, SamplingParamsError

    if args.max_tokens == 0 or args.max_tokens < -1:
        raise UsageError(f"--max-tokens: expected an integer >= 1, or -1 for no limit, got {args.max_tokens}")
    try:
        return SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            max_tokens=None if args.max_tokens == -1 else args.max_tokens,
            stop=args.stop or None,
            seed=args.seed,
        )
    except SamplingParamsError as exc:
        # Every flag here takes a value: "or None" (the Python API's unset) cannot be typed.
        raise UsageError(f"--{exc.field.replace('_', '-')}: {exc.reason.replace(' or None', '')}") from None


def _check_llm_flags(args) -> str:
    """The device to load on; flags the model does not need are checked first, in milliseconds."""
    import torch

    device = default_device() if args.device == "auto" else args.device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f'--device: expected "auto", "cpu", "cuda" or "cuda:N", got {args.device!r}') from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: this torch build or machine has no CUDA device (use --device cpu)")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.pack_weights and (parsed.type != "cpu" or args.dtype not in (None, "auto", "float32", "float")):
        raise UsageError(f"--pack-weights: needs fp32 weights on the CPU, got --device {device} --dtype {args.dtype}")
    return device


def load_llm(args):
    """fastx.LLM for --model (default SmolLM2-135M-Instruct) with the loading flags."""
    import time

    from fastx import LLM
    from fastx.checkpoints.defaults import default_generation_model
    from fastx.models.loading_progress import loading_progress

    device = _check_llm_flags(args)
    model = args.model or default_generation_model()
    live = not args.quiet and sys.stderr.isatty()
    bar = _loading_bar(model, device) if live else contextlib.nullcontext(None)
    start = time.perf_counter()
    with bar as progress, loading_progress(progress) if progress else contextlib.nullcontext():
        llm = LLM(
            model,
            device=device,
            dtype=args.dtype,
            seed=args.seed or 0,
            pack_weights=args.pack_weights,
            tensor_parallel_size=args.tensor_parallel_size,
            quantization=args.quantization,
        )
    if not args.quiet:
        dtype = str(llm.model.dtype).removeprefix("torch.")
        note(f"loaded {model} on {device} ({dtype}) in {time.perf_counter() - start:.1f} s")
    return llm


@contextlib.contextmanager
def _loading_bar(model: str, device: str):
    """A progress bar over the checkpoint's tensors on stderr, removed when the load ends (either way),
    so a failed load leaves only the error line and a finished one only the "loaded" line."""
    from tqdm.auto import tqdm

    with tqdm(desc=f"{PROG}: loading {os.path.basename(model)} on {device}", unit=" tensors", leave=False) as bar:

        def update(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        yield update


def chat_messages(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def default_out_dir(command: str) -> str:
    """Where `fastx bench`/`fastx selftest` write without --out: under the user's cache folder
    (XDG_CACHE_HOME, else ~/.cache), never into the working tree (a checkout) by surprise."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fastx", command)


def display_path(path: str) -> str:
    """`path` with the home folder shown as ~ (for help texts)."""
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path
