"""`python -m fastx.kernels.report`: compile every fastx kernel for sm_80 and sm_90, no GPU needed.

Prints one row per (kernel, configuration, target): registers per thread, bytes spilled,
shared memory. `--json` prints the rows as a JSON list. Exits 1 when any row fails its
target's limits (registers <= 255, no spills, shared memory within the per-block limit).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fastx.kernels import interpreter_enabled


def parse_targets(text: str) -> tuple[int, ...]:
    targets = []
    for part in text.split(","):
        part = part.strip().lower().removeprefix("sm_")
        if not part.isdigit() or int(part) not in (80, 90):
            raise argparse.ArgumentTypeError(f"expected sm_80 and/or sm_90, got {text!r}")
        targets.append(int(part))
    return tuple(dict.fromkeys(targets))


def format_table(rows: list[dict[str, Any]]) -> str:
    """The report as aligned text columns, one row per compilation, and a closing count of failures."""
    header = ("kernel", "target", "regs", "spill B", "shared B", "ld bits", "mma", "ok", "config")
    table = [header]
    for r in rows:
        problems = r["problems"] + ([r["error"]] if r["error"] else [])
        verdict = "yes" if r["ok"] else "NO: " + "; ".join(problems)
        table.append(
            (
                r["kernel"],
                r["target"],
                str(r["registers"]),
                str(r["spill_bytes"]),
                str(r["shared_bytes"]),
                str(r.get("load_bits")),
                str(r.get("matrix_op")),
                verdict,
                r["config"],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table]
    failed = sum(not r["ok"] for r in rows)
    return "\n".join(lines) + f"\n\n{len(rows)} compilations, {failed} failing"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastx.kernels.report", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--target", type=parse_targets, default=(80, 90), help="sm_80,sm_90 (default both)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compile processes (default: CPU count)")
    args = parser.parse_args(argv)
    if interpreter_enabled():
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile for a GPU")

    from fastx.kernels.aot import compile_all

    rows = compile_all(args.target, args.jobs)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
