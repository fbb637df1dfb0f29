"""fastx.kernels: handwritten Triton kernels and their launchers, one file per family.

Launchers take plain tensors and scalars, validate them (ValueError naming the argument),
allocate outputs and pick the grid. Nothing here knows about models, configs or the engine.
Import a launcher from its module (`from fastx.kernels.layer_norm import layer_norm`); the
package does not re-export them, so module and function names never shadow each other.
Set TRITON_INTERPRET=1 before importing a kernel module to run the kernels on the CPU.
"""

import os as _os

# FMA contraction on, as Triton has always compiled by default and as every figure and compile report
# here was measured. Triton 3.9 warns once per process that the default flips to off in 3.10 (so a
# compile pool printed it once per worker); pinning it keeps the numerics across that flip and silences
# the warning. A user's own TRITON_DEFAULT_FP_FUSION wins.
_os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter (read at each call; imports nothing heavy)."""
    return _os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")
