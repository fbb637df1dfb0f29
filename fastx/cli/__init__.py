"""The `fastx` command: generate text, embed sentences, benchmark and check the kernels, show the setup.

    fastx generate "Why is the sky blue?"          stream SmolLM2-135M-Instruct's answer
    fastx generate --file prompts.jsonl --json     one continuous batch, machine-readable output
    fastx chat                                     interactive multi-turn chat, streamed answers
    fastx embed "first sentence" "second one"      all-MiniLM-L6-v2 embeddings as JSON
    fastx serve --port 8000                        OpenAI-compatible server (needs fastx[serve])
    fastx quantize MODEL out.gguf --type Q4_K_M    a Llama checkpoint as a GGUF file (llama.cpp's types)
    fastx bench e2e --quick                        fastx vs transformers, end to end
    fastx kernels --target sm_90                   compile report (registers, spills, shared memory)
    fastx kernels --check                          kernel correctness self-check on this machine
    fastx selftest                                 kernels, greedy tokens vs transformers, GPU sweep: JSON
    fastx info                                     versions, device, backend, default models

Errors print one line, "fastx: error: ...", and exit 2 (wrong usage) or 1 (failed at run time);
set FASTX_DEBUG=1 to see the traceback instead. torch is imported only when a command needs it.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastx.cli import bench, chat, embed, generate, info, kernels, quantize, selftest, serve
from fastx.cli.common import PROG, UsageError

# Each command module: NAME, HELP, DESCRIPTION, EPILOG, add_arguments(parser) and run(args).
COMMANDS = (generate, chat, embed, serve, quantize, bench, kernels, selftest, info)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage block + message -> one line
        sys.stderr.write(f"{PROG}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    summary, details = __doc__.split("\n\n", 1)
    parser = _Parser(prog=PROG, description=summary, epilog=details, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('fastx').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(
            command.NAME, help=command.HELP, description=command.DESCRIPTION, epilog=command.EPILOG, formatter_class=fmt
        )
        command.add_arguments(p)
        p.set_defaults(func=command.run)
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
