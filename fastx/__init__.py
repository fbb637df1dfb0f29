"""fastx: Triton-accelerated transformer inference.

`import fastx.ops` gives torch.nn.functional-style ops backed by Triton kernels.
"""

import os as _os

# FASTX_BACKEND=triton on a machine without CUDA means "run the kernels in Triton's CPU
# interpreter". The interpreter must be chosen before any @triton.jit kernel is defined, i.e.
# before fastx.kernels is imported, so it is switched on here (an explicit TRITON_INTERPRET wins).
if _os.environ.get("FASTX_BACKEND", "").strip().lower() == "triton" and "TRITON_INTERPRET" not in _os.environ:
    import torch as _torch

    if not _torch.cuda.is_available():
        _os.environ["TRITON_INTERPRET"] = "1"

__version__ = "0.1.0"
