"""Repo id or local folder -> a local folder holding the checkpoint's files.

Uses huggingface_hub's standard cache (shared with transformers: a model transformers already
downloaded is not fetched again), honouring HF_HOME, HF_HUB_OFFLINE, `cache_dir`,
`local_files_only`, `revision` and `token`. Only the files inference needs are fetched.
fastx never unpickles: a repository with only `pytorch_model.bin` is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Everything a model, its tokenizer or its image processor reads; weights only as safetensors.
INFERENCE_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "chat_template.jinja",
    "additional_chat_templates/*.jinja",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
]
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """Return a local folder with the checkpoint: the path itself, or a Hub snapshot in the cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise OSError(f"{name_or_path}: expected a checkpoint folder or a Hub repo id, got a file")
    name = str(name_or_path)
    from huggingface_hub import snapshot_download

    folder = hub_call(
        name,
        revision,
        lambda: snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            allow_patterns=INFERENCE_FILES,
        ),
    )
    return Path(folder)


def hub_call(name: str, revision: str | None, call, filename: str | None = None):
    """Run a huggingface_hub download; turn its errors into OSErrors that name the repo (and file)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f": {filename} is" if filename else ":"
    try:
        return call()
    except HFValidationError as exc:
        raise OSError(f"{name}: not a local folder and not a valid Hub repo id ({exc})") from None
    except RepositoryNotFoundError:
        raise OSError(f"{name}: no such repository on the Hugging Face Hub (or it needs a token)") from None
    except RevisionNotFoundError:
        raise OSError(f"{name}: revision {revision!r} not found") from None
    except LocalEntryNotFoundError:
        # Raised both when downloading is off and when the Hub cannot be reached: say both, and
        # what works offline.
        raise OSError(
            f"{name}{what} not in the local Hugging Face cache, and it could not be downloaded (no network, "
            "or HF_HUB_OFFLINE=1 / local_files_only=True). Pass a local folder or .gguf file instead, or an "
            "embedded default model: fastx.default_generation_model() (SmolLM2-135M-Instruct) or "
            "fastx.default_embedding_model() (all-MiniLM-L6-v2); `fastx info` shows which are installed"
        ) from None
    except EntryNotFoundError:
        raise OSError(f"{name}: the repository has no file {filename!r}") from None


def refuse_pickle_only(folder: Path, name: str) -> None:
    """Raise when the checkpoint's weights exist only as pickle files."""
    pickles = [p for p in PICKLE_WEIGHTS if (folder / p).exists()]
    if pickles:
        raise OSError(
            f"{name}: has only pickle weights ({', '.join(pickles)}); fastx loads safetensors only and never "
            "unpickles a file. Convert once with transformers: "
            "AutoModel.from_pretrained(path).save_pretrained(out_dir, safe_serialization=True)"
        )


def read_json(path: str | os.PathLike, missing_ok: bool = False) -> dict[str, Any]:
    """A checkpoint's JSON object file (config.json, tokenizer_config.json, ...), with errors naming it.

    `missing_ok`: an absent file reads as {} (optional files such as special_tokens_map.json).
    """
    path = Path(path)
    if missing_ok and not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OSError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
