"""`fastx kernels`: the compile report (re-run without the interpreter) and the numerics self-check."""

import json
import os
import subprocess
import sys


def test_kernels_report_json(cli, tmp_path):
    # TRITON_INTERPRET=1 (as in this session on a CPU) must not break it: the report re-runs without.
    result = cli.run(
        "kernels", "--target", "sm_90", "--only", "rotary", "--json", cwd=tmp_path, env=cli.env(TRITON_INTERPRET="1")
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert rows and {r["target"] for r in rows} == {"sm_90"}
    assert {r["kernel"] for r in rows} == {"_rotary_fwd_kernel"}
    assert all(r["ok"] and r["spill_bytes"] == 0 for r in rows)


def test_kernels_check(cli, tmp_path):
    result = cli.run("kernels", "--check", "--dtype", "fp32,bf16", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("pass", "FAIL"))]
    ops = {line.split()[1] for line in lines}
    assert {
        "layer_norm",
        "rms_norm",
        "gelu",
        "silu_and_mul",
        "rotary_embedding",
        "varlen_attention",
        "paged_decode_attention",
    } <= ops
    assert all(line.startswith("pass") for line in lines)


def test_only_selects_by_the_listing_module():
    """`--only rms_norm` (its --help example): rms_norm.py lists layer_norm.py's kernel with IS_RMS_NORM.

    Run without the interpreter, as the report itself runs: configurations are read from JIT functions."""
    code = (
        "import json\nfrom fastx.cli.kernels import _selected_configs as s\n"
        "print(json.dumps([[c.constexprs['IS_RMS_NORM'] for c in s(['rms_norm'])], "
        "sorted({c.constexprs['IS_RMS_NORM'] for c in s(['norm'])}), sorted({c.name for c in s(['rms_norm'])})]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rms, norms, kernels = json.loads(out.stdout)
    assert rms and all(rms) and norms == [False, True] and kernels == ["_norm_fwd_kernel"]
