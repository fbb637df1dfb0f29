"""The ahead-of-time compile report: every kernel compiles for sm_80 and sm_90 without spills.

The compile runs in a subprocess without TRITON_INTERPRET (the interpreter's kernel objects
cannot be compiled for a GPU), exactly as a user runs `python -m fastx.kernels.report --json`.
"""

import json
import os
import subprocess
import sys

import pytest

from fastx.kernels.aot import jit_functions


@pytest.fixture(scope="module")
def report_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastx.kernels.report", "--json"], capture_output=True, text=True, env=env, timeout=1200
    )
    rows = json.loads(proc.stdout)
    assert proc.returncode == (0 if all(r["ok"] for r in rows) else 1), proc.stderr[-2000:]
    return rows


def test_report_rows_have_the_documented_keys(report_rows):
    assert report_rows, "the report compiled nothing"
    for row in report_rows:
        assert {"kernel", "target", "config", "registers", "spill_bytes", "shared_bytes"} <= row.keys()
    assert {r["target"] for r in report_rows} == {"sm_80", "sm_90"}


def test_every_configuration_compiles_without_spills(report_rows):
    failing = [
        f"{r['kernel']} {r['target']} [{r['config']}]: {r['problems']} {r['error'] or ''}"
        for r in report_rows
        if not r["ok"]
    ]
    assert not failing, "\n".join(failing)
    assert all(r["spill_bytes"] == 0 and r["registers"] <= 255 for r in report_rows)


def test_no_triton_kernel_escapes_the_report(report_rows):
    """Each @triton.jit function is compiled itself or inlined into one that is."""
    functions = jit_functions()
    covered = {r["kernel"] for r in report_rows}
    frontier = list(covered)
    while frontier:  # follow calls from compiled kernels into @triton.jit helpers
        name = frontier.pop()
        for callee in functions[name].fn.__code__.co_names:
            if callee in functions and callee not in covered:
                covered.add(callee)
                frontier.append(callee)
    missing = sorted(set(functions) - covered)
    assert not missing, f"@triton.jit functions missing from the compile report: {missing}"


def test_report_rejects_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "fastx.kernels.report"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "unset TRITON_INTERPRET" in proc.stderr


def test_rows_report_load_width_and_matrix_instruction(report_rows):
    for row in report_rows:
        assert row["load_bits"] in (8, 16, 32, 64, 128), row
        assert row["matrix_op"] in ("wgmma", "mma", "-"), row


def test_attention_uses_the_targets_tensor_core_instruction(report_rows):
    """Half-precision flash attention: wgmma on sm_90, mma.sync on sm_80; fp32 (IEEE dots) uses neither."""
    rows = [r for r in report_rows if r["kernel"] == "_attn_fwd_kernel"]
    half = [r for r in rows if not r["config"].startswith("float32")]
    assert half and all(r["matrix_op"] == ("wgmma" if r["target"] == "sm_90" else "mma") for r in half), [
        (r["target"], r["config"], r["matrix_op"]) for r in half
    ]
    assert all(r["matrix_op"] == "-" for r in rows if r["config"].startswith("float32"))


# Kernels bound by memory bandwidth: each must read a 16-bit dtype 16 bytes (8 values) at a time.
BANDWIDTH_BOUND = {
    "_norm_fwd_kernel",
    "_activation_fwd_kernel",
    "_rotary_fwd_kernel",
    "_depthwise_conv2d_fwd_kernel",
    "_write_kv_cache_kernel",
    "_paged_decode_partition_kernel",
    "_paged_decode_reduce_kernel",
}


def _aligned(row) -> bool:
    """The launch had 16-byte-aligned pointers and every activation stride a multiple of 16 elements.

    The depthwise filter's strides (stride_w*: 49, 7 for 7x7 taps) are never multiples of 16 and
    do not matter: the taps are read once per channel tile, the activations are what streams.
    """
    pointers_and_strides = [
        a
        for a, kind in row["arguments"].items()
        if kind[0] == "*" or (a.startswith("stride") and not a.startswith("stride_w"))
    ]
    return all(a in row["divisible_by_16"] for a in pointers_and_strides)


def test_rows_carry_the_specialisation_of_a_real_launch(report_rows):
    """Taken from the launchers' calls: pointers aligned, unit strides folded to constants like the JIT."""
    for row in report_rows:
        pointers = [a for a, kind in row["arguments"].items() if kind[0] == "*"]
        assert pointers and set(pointers) <= set(row["divisible_by_16"]), row["config"]
    norms = {r["config"].split(";")[0]: r for r in report_rows if r["kernel"] == "_norm_fwd_kernel"}
    assert "N" in norms["rms norm bfloat16 N=4096"]["divisible_by_16"]
    assert "N" not in norms["rms norm bfloat16 N=4100"]["divisible_by_16"]


def test_bandwidth_bound_half_precision_rows_use_128_bit_loads(report_rows):
    rows = [
        r
        for r in report_rows
        if r["kernel"] in BANDWIDTH_BOUND and ("bfloat16" in r["config"] or "float16" in r["config"]) and _aligned(r)
    ]
    assert {r["kernel"] for r in rows} == BANDWIDTH_BOUND
    narrow = [
        (r["kernel"], r["target"], r["config"].split(";")[0], r["load_bits"]) for r in rows if r["load_bits"] < 128
    ]
    assert not narrow, narrow
    # The check can fail: rows of an unaligned width (4100 columns) compile to narrower loads.
    unaligned = [r for r in report_rows if "N=4100" in r["config"]]
    assert unaligned and not any(_aligned(r) for r in unaligned)
    assert all(r["load_bits"] < 128 for r in unaligned)
