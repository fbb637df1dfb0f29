"""A tokenizer from a GGUF file's metadata, built the way transformers' integrations/gguf builds it.

`tokenizer.ggml.model == "gpt2"`: byte-level BPE (tokens outside GPT-2's byte alphabet respelled in
it, the split regex of `tokenizer.ggml.pre`); "llama": a sentencepiece vocabulary as BPE with byte
fallback. Control and user-defined tokens, special token ids, BOS/EOS insertion and the chat template
come from the same metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from fastx.checkpoints.gguf import GGUFCheckpoint, read_gguf
from fastx.processing.tokenizer import VERY_LARGE_INTEGER, Tokenizer

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the split regex its merges were learned with (others: GPT-2's byte-level regex).
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        (
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "dbrx",
            "smaug-bpe",
        ),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(c) for byte, c in zip(printable, chars)}


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Merges a vocabulary implies: every split of a token into two known tokens, best score first."""
    merges = []
    for merged, score in scores.items():
        splits = [(merged[:i], merged[i:]) for i in range(1, len(merged))]
        local = [(left, right, score) for left, right in splits if left in vocab and right in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _merges(data: dict, path: Path, scores_vocab: dict[str, int] | None = None) -> list[tuple[str, ...]]:
    if "merges" in data:
        return [tuple(merge.split(" ")) for merge in data["merges"]]
    if "scores" not in data:
        raise ValueError(f"{path}: GGUF tokenizer has neither tokenizer.ggml.merges nor tokenizer.ggml.scores")
    tokens = data["tokens"]
    return _merges_from_scores(scores_vocab or {t: i for i, t in enumerate(tokens)}, dict(zip(tokens, data["scores"])))


def load_gguf_tokenizer(source: str | os.PathLike | GGUFCheckpoint, name_or_path: str | None = None) -> Tokenizer:
    """A fastx Tokenizer from a GGUF file's vocabulary, merges, token types, special ids and chat template.

    `source`: the file's path, or the file already parsed by read_gguf (so a caller that loads the
    model from the same file parses its header once).
    """
    checkpoint = source if isinstance(source, GGUFCheckpoint) else read_gguf(source)
    data, path = checkpoint.tokenizer_data, checkpoint.path
    tokens, kind = data.get("tokens"), data.get("model")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: GGUF metadata lacks a tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = data.get("token_type") or []
    if kind == "gpt2":  # byte-level BPE; tokens outside the byte alphabet are respelled in it
        alphabet = _byte_alphabet()
        spelled = set(alphabet.values())
        vocab = {
            t if set(t) <= spelled else "".join(alphabet[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
        }
        backend = Backend(
            models.BPE(
                vocab=vocab,
                merges=_merges(data, path),
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="",
                fuse_unk=False,
            )
        )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        split = PRE_TOKENIZER_SPLITS.get(data.get("pre"))
        if split is not None:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        # A "control" token spelled outside the byte alphabet is a llama.cpp mislabel: transformers skips it.
        control = [t for t, kind_ in zip(tokens, types) if kind_ == _CONTROL and set(t) <= spelled]
        add_bos_default = False
    elif kind == "llama":  # sentencepiece vocabulary as BPE with byte fallback, "▁" for spaces
        vocab = {t: i for i, t in enumerate(tokens)}
        backend = Backend(
            models.BPE(vocab=vocab, merges=_merges(data, path, vocab), fuse_unk=True, byte_fallback=True, dropout=None)
        )
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        backend.decoder = decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
        )
        control = [t for t, kind_ in zip(tokens, types) if kind_ == _CONTROL]
        add_bos_default = True  # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise
    else:
        raise ValueError(f"{path}: GGUF tokenizer model {kind!r} is not supported by fastx (supported: gpt2, llama)")

    if control:
        backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    user_defined = [t for t, kind_ in zip(tokens, types) if kind_ == _USER_DEFINED and t in vocab]
    if user_defined:  # llama.cpp matches these whole in the text, like added tokens
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in user_defined])

    special = {}
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        index = data.get(key)
        if index is not None and not (isinstance(index, int) and 0 <= index < len(tokens)):
            raise ValueError(f"{path}: tokenizer.ggml.{key} {index!r} is outside the vocabulary of {len(tokens)}")
        special[name] = tokens[index] if index is not None else None
    chat_template = data.get("chat_template")
    tokenizer = Tokenizer(
        backend,
        special_tokens=special,
        extra_special_tokens=control,
        model_max_length=VERY_LARGE_INTEGER,
        chat_template=chat_template if isinstance(chat_template, str) else None,
        name_or_path=name_or_path if name_or_path is not None else str(path),
    )
    # transformers' update_post_processor: [BOS] $A [EOS], and [BOS] $B [EOS] with type id 1 for pairs.
    bos, eos = special["bos_token"], special["eos_token"]
    add_bos = bool(data.get("add_bos_token", add_bos_default)) and bos is not None
    add_eos = bool(data.get("add_eos_token", False)) and eos is not None
    single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
    pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
    used = [bos] * add_bos + [eos] * add_eos
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys(used)]
    )
    return tokenizer
