"""Record every Triton kernel launch made inside a block: kernel, grid and each argument.

Used to check what really runs: that a decode step launches the same kernels with the same
grids, scalars and pointers at every context length (what a CUDA graph replays), and to compile
the compile report from the launchers' own calls. Works on a GPU (JITFunction) and under the
interpreter (InterpretedFunction): both are entered through `kernel[grid](...)` -> `run`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


@dataclass
class Launch:
    function: Any = field(repr=False)  # the JITFunction (or InterpretedFunction) launched
    kernel: str
    grid: tuple[int, ...]
    args: dict[str, Any]  # every argument by name: tensors as passed, scalars, constexprs
    options: dict[str, Any] = field(default_factory=dict)  # num_warps, num_stages, ...

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.args.items() if isinstance(v, torch.Tensor)}

    @property
    def scalars(self) -> dict[str, Any]:
        return {k: v for k, v in self.args.items() if not isinstance(v, torch.Tensor)}


_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@contextlib.contextmanager
def record_launches(execute: bool = True) -> Iterator[list[Launch]]:
    """`with record_launches() as launches:` appends one Launch per kernel launch inside the block.

    `execute=False` records without running anything: the compile report calls the launchers on
    CPU tensors, outside the interpreter, only to learn what they would launch.
    """
    launches: list[Launch] = []
    originals = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def wrap(original):
        def run(self, *args, grid, warmup, **kwargs):
            if not warmup:
                named = dict(zip(self.arg_names, args))
                options = {k: kwargs[k] for k in _OPTIONS if k in kwargs}
                named.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
                resolved = grid(named) if callable(grid) else grid
                launches.append(Launch(self, self.fn.__name__, tuple(resolved), named, options))
                if not execute:
                    return None
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        return run

    try:
        for cls, original in originals.items():
            cls.run = wrap(original)
        yield launches
    finally:
        for cls, original in originals.items():
            cls.run = original
