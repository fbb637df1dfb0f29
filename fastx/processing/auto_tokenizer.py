"""`AutoTokenizer.from_pretrained(repo_or_folder_or_gguf)`: a Tokenizer from a checkpoint's files.

tokenizer.json (or a BERT vocab.txt) for the pipeline; tokenizer_config.json and
special_tokens_map.json for special tokens, lengths, padding sides and chat templates, resolved as
transformers resolves them; a GGUF file's own vocabulary through fastx.processing.gguf_tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _Backend

from fastx.checkpoints.gguf import resolve_gguf_file
from fastx.checkpoints.hub import read_json, resolve_checkpoint
from fastx.processing.gguf_tokenizer import load_gguf_tokenizer
from fastx.processing.tokenizer import VERY_LARGE_INTEGER, Tokenizer

# Tokenizer classes (and model types whose default tokenizer is one of them) that return
# token_type_ids by default: transformers' `model_input_names` of BertTokenizer and kin.
_TOKEN_TYPE_CLASSES = {
    "BertTokenizer",
    "ConvBertTokenizer",
    "ElectraTokenizer",
    "LayoutLMTokenizer",
    "MobileBertTokenizer",
    "SqueezeBertTokenizer",
    "DebertaTokenizer",
    "DebertaV2Tokenizer",
    "FNetTokenizer",
    "MarkupLMTokenizer",
    "CanineTokenizer",
    "TapasTokenizer",
}
_TOKEN_TYPE_MODEL_TYPES = {
    "bert",
    "distilbert",
    "electra",
    "layoutlm",
    "squeezebert",
    "convbert",
    "megatron-bert",
    "nomic_bert",
    "ernie",
    "mobilebert",
    "deberta",
    "deberta-v2",
}
# vocab.txt-only repos are built as BERT WordPiece only for these tokenizer classes (or none named).
_WORDPIECE_CLASSES = {
    "BertTokenizer",
    "DistilBertTokenizer",
    "ElectraTokenizer",
    "ConvBertTokenizer",
    "LayoutLMTokenizer",
    "MobileBertTokenizer",
    "SqueezeBertTokenizer",
}


def _token_content(value: Any) -> str | None:
    """A special token given as a string or as an AddedToken dict {"content": ...}."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"special token: expected a string or a {{'content': ...}} dict, got {value!r}")


class AutoTokenizer:
    """`AutoTokenizer.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")` -> Tokenizer."""

    @staticmethod
    def from_pretrained(
        name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        gguf_file: str | os.PathLike | None = None,
    ) -> Tokenizer:
        # A GGUF file (a .gguf path, or gguf_file=name in a folder / repo) carries its own vocabulary.
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        gguf_path = resolve_gguf_file(name_or_path, gguf_file, **hub)
        if gguf_path is not None:
            return load_gguf_tokenizer(gguf_path, name_or_path=str(name_or_path))
        folder = resolve_checkpoint(name_or_path, **hub)
        return load_tokenizer(folder, name_or_path=str(name_or_path))


def load_tokenizer(folder: str | os.PathLike, name_or_path: str | None = None) -> Tokenizer:
    """Build a Tokenizer from a local folder (tokenizer.json + tokenizer_config.json + special_tokens_map.json)."""
    folder = Path(folder)
    config = read_json(folder / "tokenizer_config.json", missing_ok=True)
    special_map = read_json(folder / "special_tokens_map.json", missing_ok=True)
    tokenizer_class = str(config.get("tokenizer_class") or "").removesuffix("Fast")
    if (folder / "tokenizer.json").is_file():
        backend = _Backend.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.txt").is_file() and (not tokenizer_class or tokenizer_class in _WORDPIECE_CLASSES):
        backend = _bert_wordpiece(folder / "vocab.txt", config)
    else:
        raise OSError(
            f"{folder}: no tokenizer.json; fastx builds tokenizers from tokenizer.json only (vocab.txt-only BERT "
            "repos excepted). Convert once with transformers: AutoTokenizer.from_pretrained(path).save_pretrained(path)"
        )

    # Special tokens: tokenizer_config.json, overridden by special_tokens_map.json as transformers does for
    # configs without `added_tokens_decoder` (newer saves keep everything in tokenizer_config.json).
    special: dict[str, str | None] = {}
    for key, value in config.items():
        if key.endswith("_token") and (value is None or isinstance(value, (str, Mapping))):
            special[key] = _token_content(value)
    for key, value in special_map.items():
        if key.endswith("_token") and ("added_tokens_decoder" not in config or special.get(key) is None):
            special[key] = _token_content(value)
    extra: list[str] = []
    for source in (config, special_map):
        for key in ("extra_special_tokens", "additional_special_tokens"):
            value = source.get(key)
            if isinstance(value, Mapping):  # named model-specific tokens (image_token, ...)
                special.update({k: _token_content(v) for k, v in value.items()})
            elif isinstance(value, (list, tuple)):
                extra += [_token_content(v) for v in value]
    padding, truncation = backend.padding, backend.truncation  # tokenizer.json defaults transformers keeps
    if special.get("pad_token") is None and padding:
        special["pad_token"] = padding.get("pad_token")

    model_max_length = config.get("model_max_length", config.get("max_len"))
    if model_max_length is not None and not isinstance(model_max_length, (int, float)):
        raise ValueError(f"tokenizer_config.json: model_max_length: expected a number, got {model_max_length!r}")
    return Tokenizer(
        backend,
        special_tokens=special,
        extra_special_tokens=list(dict.fromkeys(extra)),
        model_max_length=int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER,
        padding_side=config.get("padding_side") or (padding or {}).get("direction", "right").lower(),
        truncation_side=config.get("truncation_side") or (truncation or {}).get("direction", "right").lower(),
        chat_template=_chat_template(folder, config),
        model_input_names=config.get("model_input_names") or _model_input_names(folder, tokenizer_class),
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        name_or_path=name_or_path if name_or_path is not None else str(folder),
    )


def _chat_template(folder: Path, config: dict) -> str | dict[str, str] | None:
    """tokenizer_config's chat_template (string or [{name, template}]); .jinja files take priority."""
    templates: dict[str, str] = {}
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "additional_chat_templates").is_dir():
        for path in sorted((folder / "additional_chat_templates").glob("*.jinja")):
            templates[path.stem] = path.read_text(encoding="utf-8")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    template = config.get("chat_template")
    if isinstance(template, (list, tuple)):
        return {t["name"]: t["template"] for t in template}
    if template is not None and not isinstance(template, str):
        got = type(template).__name__
        raise ValueError(f"tokenizer_config.json: chat_template: expected a string or a list, got {got}")
    return template


def _model_input_names(folder: Path, tokenizer_class: str) -> list[str]:
    """transformers' per-class `model_input_names`: BERT-like tokenizers also return token_type_ids."""
    if tokenizer_class:
        uses_types = tokenizer_class in _TOKEN_TYPE_CLASSES
    else:
        uses_types = read_json(folder / "config.json", missing_ok=True).get("model_type") in _TOKEN_TYPE_MODEL_TYPES
    return ["input_ids", "token_type_ids", "attention_mask"] if uses_types else ["input_ids", "attention_mask"]


def _bert_wordpiece(vocab: Path, config: dict) -> _Backend:
    """A vocab.txt-only BERT repo: the WordPiece pipeline transformers' BertTokenizer builds."""
    from tokenizers.implementations import BertWordPieceTokenizer

    def token(name: str, default: str) -> str:
        return _token_content(config.get(name)) or default

    wordpiece = BertWordPieceTokenizer(
        str(vocab),
        unk_token=token("unk_token", "[UNK]"),
        sep_token=token("sep_token", "[SEP]"),
        cls_token=token("cls_token", "[CLS]"),
        pad_token=token("pad_token", "[PAD]"),
        mask_token=token("mask_token", "[MASK]"),
        lowercase=config.get("do_lower_case", True),
        strip_accents=config.get("strip_accents"),
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
    )
    return wordpiece._tokenizer
