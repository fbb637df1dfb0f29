"""Hub resolution: local folders, the standard Hugging Face cache offline, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fastx.checkpoints.hub import resolve_checkpoint
from fastx.checkpoints.safetensors import load_state_dict

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cached_repo(cache, repo_id):
    """Lay a checkpoint out as huggingface_hub's cache does (refs/main -> snapshots/<commit>)."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    (snapshot / "config.json").write_text('{"model_type": "bert"}')
    save_file({"w": torch.arange(4.0)}, snapshot / "model.safetensors")
    return snapshot


def test_local_folder_is_used_as_is(tmp_path):
    assert resolve_checkpoint(tmp_path) == tmp_path


def test_repo_id_resolves_from_the_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _cached_repo(tmp_path, "fastx-test/tiny")
    folder = resolve_checkpoint("fastx-test/tiny", cache_dir=tmp_path)
    assert folder.resolve() == snapshot.resolve()
    torch.testing.assert_close(load_state_dict(folder)["w"], torch.arange(4.0))


def test_repo_id_resolves_from_hf_home(tmp_path):
    """HF_HOME is read when huggingface_hub is imported, so this runs in a fresh interpreter."""
    snapshot = _cached_repo(tmp_path / "hub", "fastx-test/tiny")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = "from fastx.checkpoints.hub import resolve_checkpoint; print(resolve_checkpoint('fastx-test/tiny'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == snapshot.resolve()


def test_missing_repo_offline_is_an_oserror_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="fastx-test/absent: not in the local Hugging Face cache"):
        resolve_checkpoint("fastx-test/absent", cache_dir=tmp_path)


def test_a_file_path_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"")
    with pytest.raises(OSError, match="expected a checkpoint folder"):
        resolve_checkpoint(f)
