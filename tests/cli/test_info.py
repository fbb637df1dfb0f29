"""`fastx info`: versions, device, backend and the default models."""

import json

import torch


def test_info(cli, tmp_path):
    text = cli.run("info", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    for key in ("fastx", "python", "torch", "triton", "transformers", "device", "backend", "generation model"):
        assert any(line.startswith(key) for line in text.stdout.splitlines()), key
    info = json.loads(cli.run("info", "--json", cwd=tmp_path).stdout)
    assert info["torch"] == torch.__version__
    expected = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    assert info["device"].startswith(expected)
    assert ("eager" in info["backend"]) == (not torch.cuda.is_available())
