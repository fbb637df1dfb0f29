"""fastx.kernels: handwritten Triton kernels and their launchers, one file per family.

Launchers take plain tensors and scalars, validate them (ValueError naming the argument),
allocate outputs and pick the grid. Nothing here knows about models, configs or the engine.
Import a launcher from its module (`from fastx.kernels.layer_norm import layer_norm`); the
package does not re-export them, so module and function names never shadow each other.
Set TRITON_INTERPRET=1 before importing a kernel module to run the kernels on the CPU.
"""

import os as _os


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET asks for Triton's CPU interpreter (read at each call; imports nothing heavy)."""
    return _os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "off")
