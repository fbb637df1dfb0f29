"""Ahead-of-time compilation of fastx's Triton kernels for real GPUs, without a GPU.

Every kernel module in fastx.kernels exposes `aot_configs() -> list[AotConfig]`: its launchers
called at representative sizes on CPU tensors with the kernel launches recorded, not run
(`configs_from_launches`). Each launch becomes one configuration with exactly the specialisation
Triton's JIT gives that launch (its own `specialize_impl`: argument types, ints equal to 1 made
constexpr, pointers and ints divisible by 16 marked so), so the report compiles the code that
really runs. `compile_config` builds the cubin for an sm_XX target with Triton's own compiler and
reads the resource use with the `cuobjdump` that ships inside the Triton wheel.

This must run in a process where TRITON_INTERPRET is unset: under the interpreter `@triton.jit`
yields interpreter objects that `triton.compile` cannot take.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

from fastx.kernels import interpreter_enabled

# Per-block shared-memory limits (bytes) of the targets fastx reports on; CUDA C programming
# guide, "Technical Specifications per Compute Capability" (8.0: 163 KB, 9.0: 227 KB).
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
MAX_REGISTERS_PER_THREAD = 255
REGISTERS_PER_SM = 65536
TARGETS = (80, 90)


@dataclass(frozen=True)
class AotConfig:
    """One compile job: a kernel, the types of its runtime arguments, its constexprs, launch options."""

    kernel: Any  # a triton JITFunction
    arg_types: dict[str, str]  # runtime argument -> Triton type string ("*bf16", "i32", "fp32")
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    note: str = ""  # what this configuration stands for ("bf16, N=4096")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.__name__

    @classmethod
    def from_launch(cls, launch, note: str) -> AotConfig:
        """The configuration Triton's JIT compiles for this recorded launch."""
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend

        arg_types, constexprs, divisible = {}, {}, []
        for param in launch.function.params:
            value = launch.args.get(param.name, param.default)
            if param.is_constexpr:
                constexprs[param.name] = value
                continue
            specialize, align = not param.do_not_specialize, not param.do_not_specialize_on_alignment
            kind, attr = native_specialize_impl(BaseBackend, value, param.is_const, specialize, align)
            if kind == "constexpr":  # the JIT folds ints equal to 1 (unit strides) and None into the code
                constexprs[param.name] = value
                continue
            arg_types[param.name] = kind
            if attr == "D":
                divisible.append(param.name)
        return cls(
            kernel=launch.function,
            arg_types=arg_types,
            constexprs=constexprs,
            num_warps=launch.options.get("num_warps", 4),
            num_stages=launch.options.get("num_stages", 3),
            note=note,
            extra={"divisible_by_16": tuple(divisible)},
        )

    def describe(self) -> str:
        consts = ",".join(f"{k}={v}" for k, v in self.constexprs.items())
        head = f"{self.note}; " if self.note else ""
        return f"{head}{consts}; warps={self.num_warps},stages={self.num_stages}"


def kernel_modules() -> list[str]:
    """Names of every module in fastx.kernels (those with kernels export `aot_configs`)."""
    import fastx.kernels as pkg

    return [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("__")]


def jit_functions() -> dict[str, Any]:
    """Every @triton.jit function defined in fastx.kernels, by name (the coverage test's list)."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    found = {}
    for module_name in kernel_modules():
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, (JITFunction, InterpretedFunction)) and value.fn.__module__ == module_name:
                found[value.fn.__name__] = value
    return found


def configs_by_module() -> dict[str, list[AotConfig]]:
    """Each kernel module's short name ("rms_norm") -> the configurations its `aot_configs` lists.

    The module that lists a configuration is not always the one that defines its kernel (rms_norm.py
    compiles layer_norm.py's kernel with IS_RMS_NORM), so selection by name goes through this."""
    found = {}
    for module_name in kernel_modules():
        module = importlib.import_module(module_name)
        if hasattr(module, "aot_configs"):
            found[module_name.rpartition(".")[2]] = module.aot_configs()
    return found


def all_configs() -> list[AotConfig]:
    return [cfg for configs in configs_by_module().values() for cfg in configs]


def _alignment_attrs(cfg: AotConfig, signature: dict[str, str]) -> dict:
    """The launch's divisibility specialisation: pointers 16-byte aligned, ints divisible by 16.

    That is what lets the compiler vectorise loads; without it the report would compile a
    scalar-load kernel no real launch runs. The names come from the recorded launch.
    """
    names = list(signature)
    return {(names.index(name),): [["tt.divisibility", 16]] for name in cfg.extra.get("divisible_by_16", ())}


def configs_from_launches(cases) -> list[AotConfig]:
    """[(note, call)] -> one AotConfig per kernel launch each `call()` makes (recorded, not run).

    The calls are the launchers' public functions on CPU tensors of representative sizes, so
    the configurations (constexprs, warps, stages, specialisation) are the launchers' own.
    """
    from fastx.kernels.launches import record_launches

    configs = []
    for note, call in cases:
        with record_launches(execute=False) as launches:
            call()
        if not launches:
            raise RuntimeError(f"{note}: the call launched no kernel")
        configs.extend(AotConfig.from_launch(launch, note) for launch in launches)
    return configs


def _signature(cfg: AotConfig) -> dict[str, str]:
    signature = {}
    for param in cfg.kernel.params:
        if param.is_constexpr or (param.name in cfg.constexprs and param.name not in cfg.arg_types):
            if param.name not in cfg.constexprs:
                raise ValueError(f"{cfg.name}: constexpr {param.name} has no value in its AotConfig")
            signature[param.name] = "constexpr"
        else:
            if param.name not in cfg.arg_types:
                raise ValueError(f"{cfg.name}: argument {param.name} has no type in its AotConfig")
            signature[param.name] = cfg.arg_types[param.name]
    return signature


def _cuobjdump() -> str:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else (shutil.which("cuobjdump") or bundled)


_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
# Global loads in PTX: ld.global[.qualifiers][.vN].<type><bits>, e.g. ld.global.v4.b32 (128 bits).
_GLOBAL_LOAD = re.compile(r"\bld\.global(?:\.[a-z0-9_:]+)*?(?:\.v(\d))?\.[bfsu](\d+)\b")


def ptx_instructions(ptx: str) -> dict[str, Any]:
    """What the PTX says about memory and math: the widest global load (bits) and the matrix instruction.

    `load_bits` is the widest ld.global a thread issues (128 = one 16-byte vector load); bandwidth-
    bound kernels want 128 at aligned sizes. `matrix_op` is "wgmma" (Hopper warpgroup MMA), "mma"
    (Ampere-style mma.sync) or "-" (no tensor-core instruction).
    """
    widths = [int(lanes or 1) * int(bits) for lanes, bits in _GLOBAL_LOAD.findall(ptx)]
    matrix_op = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if re.search(r"\bmma\.sync\b", ptx) else "-")
    return {"load_bits": max(widths, default=0), "matrix_op": matrix_op}


def compile_config(cfg: AotConfig, arch: int) -> dict[str, Any]:
    """Compile one configuration for sm_<arch>; return its row of the report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row: dict[str, Any] = {
        "kernel": cfg.name,
        "target": f"sm_{arch}",
        "config": cfg.describe(),
        "arguments": dict(cfg.arg_types),  # runtime (non-constexpr) arguments and their Triton types
        "divisible_by_16": list(cfg.extra.get("divisible_by_16", ())),  # the launch's specialisation
    }
    try:
        signature = _signature(cfg)
        source = ASTSource(
            fn=cfg.kernel, signature=signature, constexprs=dict(cfg.constexprs), attrs=_alignment_attrs(cfg, signature)
        )
        compiled = triton.compile(
            source,
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
        )
        with tempfile.TemporaryDirectory() as tmp:
            cubin = os.path.join(tmp, "kernel.cubin")
            with open(cubin, "wb") as f:
                f.write(compiled.asm["cubin"])
            usage = subprocess.run([_cuobjdump(), "-res-usage", cubin], capture_output=True, text=True, check=True)
        match = _RES_USAGE.search(usage.stdout)
        if match is None:
            raise RuntimeError(f"cannot parse cuobjdump output: {usage.stdout!r}")
        registers, stack, static_shared, local = map(int, match.groups())
        # Triton allocates its shared memory dynamically; metadata.shared is that amount.
        shared = int(compiled.metadata.shared) + static_shared
        threads = cfg.num_warps * 32
        row.update(ptx_instructions(compiled.asm["ptx"]))
        row.update(
            registers=registers,
            spill_bytes=stack + local,  # a Triton kernel has no local arrays: any stack is spilling
            shared_bytes=shared,
            threads=threads,
            error=None,
        )
        problems = []
        if registers > MAX_REGISTERS_PER_THREAD:
            problems.append(f"{registers} registers > {MAX_REGISTERS_PER_THREAD}")
        if registers * threads > REGISTERS_PER_SM:
            problems.append(f"{registers} registers x {threads} threads > {REGISTERS_PER_SM}")
        if stack + local:
            problems.append(f"{stack + local} bytes spilled")
        if shared > SHARED_MEMORY_LIMIT[arch]:
            problems.append(f"{shared} bytes shared > {SHARED_MEMORY_LIMIT[arch]}")
        row["ok"] = not problems
        row["problems"] = problems
    except Exception as exc:  # a compile failure is a finding of the report, not a crash of it
        row.update(registers=None, spill_bytes=None, shared_bytes=None, threads=cfg.num_warps * 32)
        row.update(load_bits=None, matrix_op=None)
        row.update(error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300], ok=False, problems=["compile failed"])
    return row


def _compile_job(job: tuple[int, int]) -> dict[str, Any]:
    index, arch = job
    return compile_config(all_configs()[index], arch)


def compile_all(targets=TARGETS, jobs: int | None = None) -> list[dict[str, Any]]:
    """Compile every configuration for every target, in parallel processes."""
    if interpreter_enabled():
        raise RuntimeError("the compile report needs TRITON_INTERPRET unset (the interpreter cannot emit GPU code)")
    n = len(all_configs())
    work = [(i, arch) for i in range(n) for arch in targets]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    if jobs <= 1:
        return [_compile_job(w) for w in work]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_compile_job, work))
