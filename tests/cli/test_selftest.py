"""`fastx selftest`: on a CPU the kernel check runs in the interpreter and greedy tokens equal transformers'."""

import json

import pytest


def test_selftest_writes_a_passing_report(cli, tmp_path):
    pytest.importorskip("transformers")
    result = cli.run("selftest", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "selftest.json").read_text())
    assert report["kernels_ok"] is True
    assert any(line.startswith("pass  paged_decode_attention") for line in report["kernel_checks"])
    assert report["greedy"] == {"ok": True, "prompts": 2, "tokens": 32, "first_difference": [None, None]}
    assert report["sweep"] == []  # the benchmark sweep needs a GPU


def test_selftest_rejects_a_bad_dtype(cli, tmp_path):
    result = cli.run("selftest", "--dtype", "fp8", "--out", tmp_path / "out", cwd=tmp_path)
    cli.assert_one_line_error(result, 2, "--dtype")
