"""`fastx quantize`: a Llama safetensors checkpoint -> a GGUF file (F32 ... Q4_K_M) for fastx and llama.cpp."""

from __future__ import annotations

import sys
from pathlib import Path

from fastx.cli.common import UsageError, note

NAME = "quantize"
HELP = "write a Llama checkpoint as a GGUF file (F16, Q8_0, Q4_K_M, ...)"
TYPE_NAMES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M")
DESCRIPTION = (
    "Convert a Llama-family safetensors checkpoint (a folder or a Hub id) into one GGUF file\n"
    "with llama.cpp's metadata, tensor names and types, loadable by fastx, transformers and\n"
    "llama.cpp. Plain types apply to every 2-D weight (llama-quantize --pure); Q4_K_M and\n"
    "Q5_K_M follow llama.cpp's mixes. Norms stay F32; rows whose length the type's block does\n"
    "not divide fall back as llama.cpp does (listed at the end)."
)
EPILOG = (
    "types: " + ", ".join(TYPE_NAMES) + "\n\nexample:\n"
    "  fastx quantize HuggingFaceTB/SmolLM2-135M-Instruct smollm2-q8_0.gguf --type Q8_0"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="Llama checkpoint folder or Hub id (safetensors)")
    parser.add_argument("output", metavar="OUT.gguf", help="the GGUF file to write")
    parser.add_argument("--type", default="Q8_0", help=f"tensor type or mix (default Q8_0): {', '.join(TYPE_NAMES)}")
    parser.add_argument("--force", action="store_true", help="overwrite OUT.gguf if it exists")
    parser.add_argument("--quiet", "-q", action="store_true", help="no per-tensor progress")


def _resolve(model: str) -> Path:
    """A local folder as given; otherwise a Hub id through fastx's checkpoint resolution (the cache first)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_local:
        what = "a file" if path.exists() else "no such folder"
        raise UsageError(f"MODEL: expected a checkpoint folder or a Hub repo id, got {model!r} ({what})")
    from fastx.checkpoints.hub import resolve_checkpoint

    return resolve_checkpoint(model)


def run(args) -> int:
    from fastx.checkpoints.gguf_types import parse_type

    try:
        kind = parse_type(args.type)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    folder = _resolve(args.model)
    from fastx.checkpoints.gguf_writer import prepare, write

    try:
        job = prepare(folder, args.output, kind, force=args.force)
    except (ValueError, OSError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None

    width = len(str(len(job.plan)))

    def progress(index: int, count: int, tensor) -> None:
        if not args.quiet:
            shape = "x".join(map(str, tensor.shape))
            sys.stderr.write(f"[{index:>{width}}/{count}] {tensor.name:<28} {shape:>12} {tensor.type}\n")
            sys.stderr.flush()

    report = write(job, progress)
    for tensor in report.fallbacks:
        note(f"fallback: {tensor.name} {tensor.fell_back_from} -> {tensor.type} (row length {tensor.shape[-1]})")
    fallbacks = len(report.fallbacks)
    print(
        f"wrote {report.output} ({kind}): {len(report.tensors)} tensors, {fallbacks} fell back; "
        f"source {report.source_bytes:,} bytes -> output {report.output_bytes:,} bytes "
        f"({report.output_bytes / max(report.source_bytes, 1):.3f}x), {report.bits_per_weight:.2f} bits per weight"
    )
    return 0
