"""Hugging Face tokenizers without transformers: `AutoTokenizer.from_pretrained(repo_or_folder)`.

The Rust `tokenizers` library does the work (tokenizer.json: normalizer, pre-tokenizer, model,
post-processor, decoder); this file adds what transformers layers on top and a user can see:
special tokens from tokenizer_config.json / special_tokens_map.json, padding and truncation
arguments, `BatchEncoding`, and chat templates rendered with sandboxed Jinja exactly as transformers
renders them. fastx.processing.auto_tokenizer builds one from a checkpoint's files.

Semantics follow transformers v5 `TokenizersBackend` (names, defaults, which keys come back), with
one deliberate difference: `apply_chat_template(tokenize=True)` returns the token ids unless
`return_dict=True` (transformers v5 returns a BatchEncoding by default, v4 returned ids).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as _Backend

from fastx.processing.chat_template import _alias_reasoning, _compile_template, _plain

# transformers' "no limit" model_max_length, and the bound above which it is treated as unset.
VERY_LARGE_INTEGER = int(1e30)
LARGE_INTEGER = int(1e20)
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")


class BatchEncoding(dict):
    """The tokenizer's output: a dict (input_ids, attention_mask, ...) with attribute access."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def to(self, device) -> BatchEncoding:
        """Move every tensor value to `device` (lists are left alone); returns self."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device)
        return self


class Tokenizer:
    """A `tokenizers.Tokenizer` plus transformers' calling conventions (see AutoTokenizer)."""

    def __init__(
        self,
        backend: _Backend,
        *,
        special_tokens: dict[str, str | None] | None = None,
        extra_special_tokens: list[str] | None = None,
        model_max_length: int = VERY_LARGE_INTEGER,
        padding_side: str = "right",
        truncation_side: str = "right",
        chat_template: str | dict[str, str] | None = None,
        model_input_names: list[str] | None = None,
        clean_up_tokenization_spaces: bool = False,
        name_or_path: str = "",
    ):
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name}: expected 'left' or 'right', got {side!r}")
        self._backend = backend
        # Per-call padding/truncation live on the shared Rust object; the lock keeps threads apart.
        self._lock = threading.Lock()
        self._backend.no_padding()
        self._backend.no_truncation()
        if backend.post_processor is None:
            # transformers' default: no special tokens, second sequence of a pair gets type id 1.
            backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        self._special = {name: None for name in SPECIAL_TOKEN_NAMES}
        self._special.update(special_tokens or {})
        self.extra_special_tokens = list(extra_special_tokens or [])
        self._register_special_tokens()
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.chat_template = chat_template
        self.model_input_names = list(model_input_names or ["input_ids", "attention_mask"])
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.name_or_path = name_or_path

    def _register_special_tokens(self) -> None:
        """Make every named and extra special token an added special token of the backend, as transformers does."""
        present = {t.content for t in self._backend.get_added_tokens_decoder().values()}
        wanted = dict.fromkeys([*self._special.values(), *self.extra_special_tokens])
        missing = [t for t in wanted if t and t not in present]
        if missing:
            self._backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}  # a lock cannot be pickled or copied

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    # -- special tokens and vocabulary --
    def __getattr__(self, key: str) -> Any:
        # bos_token, bos_token_id, ... and model-specific names such as image_token(_id)
        special = self.__dict__.get("_special", {})
        if key in special:
            return special[key]
        if key.endswith("_id") and key[:-3] in special:
            token = special[key[:-3]]
            return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """Named special tokens that are set, e.g. {"bos_token": "<s>", ...} (what chat templates see)."""
        return {name: token for name, token in self._special.items() if token is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens]))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def backend_tokenizer(self) -> _Backend:
        return self._backend

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int] | None:
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            return index if index is not None else self.unk_token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )

    # -- encoding --
    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str] | None = None,
        *,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
        return_attention_mask: bool | None = None,
        return_token_type_ids: bool | None = None,
        padding_side: str | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> BatchEncoding:
        """Tokenize one text (flat lists) or a batch (lists of lists); transformers' padding/truncation rules."""
        batched = isinstance(text, (list, tuple))
        if not batched and not isinstance(text, str):
            raise ValueError(f"text: expected a string or a list of strings, got {type(text).__name__}")
        if batched and not all(isinstance(t, str) for t in text):
            raise ValueError("text: expected a string or a list of strings, got a list with non-string items")
        if batched:
            if isinstance(text_pair, str) or (text_pair is not None and len(text_pair) != len(text)):
                raise ValueError(f"text_pair: expected a list of {len(text)} strings like text, got {text_pair!r:.80}")
            inputs = list(zip(text, text_pair)) if text_pair is not None else list(text)
        else:
            inputs = [(text, text_pair) if text_pair else text]
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side: expected 'left' or 'right', got {padding_side!r}")
        pad_to, truncate, max_length = self._strategies(padding, truncation, max_length)
        with self._lock:
            try:
                if truncate:
                    strategy = "longest_first" if truncate is True else truncate
                    self._backend.enable_truncation(max_length, strategy=strategy, direction=self.truncation_side)
                if pad_to:
                    self._backend.enable_padding(
                        direction=padding_side or self.padding_side,
                        pad_id=self.pad_token_id,
                        pad_token=self.pad_token,
                        length=max_length if pad_to == "max_length" else None,
                        pad_to_multiple_of=pad_to_multiple_of,
                    )
                encodings = self._backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
            finally:
                self._backend.no_padding()
                self._backend.no_truncation()
        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        out = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            out["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            out["attention_mask"] = [e.attention_mask for e in encodings]
        if return_tensors is not None:
            return BatchEncoding({k: _as_tensor(v, k, return_tensors) for k, v in out.items()})
        return BatchEncoding(out if batched else {k: v[0] for k, v in out.items()})

    def _strategies(self, padding, truncation, max_length) -> tuple[str | None, bool | str, int | None]:
        """transformers' `_get_padding_truncation_strategies`: (pad mode, truncation, max_length)."""
        if max_length is not None and padding is False and truncation is None:
            truncation = True  # a bare max_length means "truncate to it"
        if padding is True or padding == "longest":
            pad_to = "longest"
        elif padding is False or padding == "do_not_pad":
            pad_to = None
        elif padding == "max_length":
            pad_to = "max_length"
        else:
            raise ValueError(f"padding: expected True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        if truncation in (False, None, "do_not_truncate"):
            truncate = False
        elif truncation is True or truncation in TRUNCATION_STRATEGIES:
            truncate = truncation
        else:
            raise ValueError(f"truncation: expected a bool or one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
        if max_length is None:
            unlimited = self.model_max_length > LARGE_INTEGER
            if pad_to == "max_length":
                pad_to, max_length = (None, None) if unlimited else (pad_to, self.model_max_length)
            if truncate:
                truncate, max_length = (False, max_length) if unlimited else (truncate, self.model_max_length)
        if pad_to and (self.pad_token is None or self.pad_token_id is None):
            raise ValueError(
                "padding: the tokenizer has no pad_token; set one (tokenizer.pad_token = tokenizer.eos_token) "
                "or call without padding"
            )
        return pad_to, truncate, max_length

    def encode(self, text: str, text_pair: str | None = None, add_special_tokens: bool = True, **kwargs) -> list[int]:
        return self(text, text_pair, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[str]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).tokens

    # -- decoding --
    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None):
        """Ids (list, tensor or int) -> text; a batch (list of lists, 2-D tensor) -> list of texts."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        if isinstance(ids, int):
            ids = [ids]
        if isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple)):
            return [self.decode(seq, skip_special_tokens, clean_up_tokenization_spaces) for seq in ids]
        text = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        # transformers skips the cleanup for BPE models: it would delete real spaces before punctuation
        if clean_up_tokenization_spaces and type(self._backend.model).__name__ != "BPE":
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None) -> list[str]:
        out = self.decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)
        return [out] if isinstance(out, str) else out

    # -- chat templates --
    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        """The template to render: a named or given one, else the tokenizer's ("tool_use" when tools are given)."""
        if isinstance(self.chat_template, dict):
            templates = self.chat_template
            if chat_template in templates:
                return templates[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in templates:
                    return templates["tool_use"]
                if "default" in templates:
                    return templates["default"]
                raise ValueError(
                    f"chat_template: this tokenizer has several templates {sorted(templates)} and no 'default'; "
                    "pass chat_template=<name>"
                )
        if chat_template is not None:
            return chat_template
        if self.chat_template is None:
            raise ValueError(
                f"chat_template: {self.name_or_path or 'this tokenizer'} has no chat template (no chat_template "
                "in tokenizer_config.json and no chat_template.jinja); pass chat_template=<jinja string>"
            )
        return self.chat_template

    def apply_chat_template(
        self,
        messages: list[dict] | list[list[dict]],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        return_tensors: str | None = None,
        tools: list[dict] | None = None,
        *,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        return_dict: bool = False,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        **kwargs,
    ):
        """Render the conversation(s) with the Jinja chat template; tokenize=False gives the text.

        The text is encoded with add_special_tokens=False (the template writes BOS etc. itself).
        Extra keyword arguments are template variables (e.g. enable_thinking=False).
        """
        template = self.get_chat_template(chat_template, tools)
        if tools is not None and not all(isinstance(t, Mapping) for t in tools):
            raise ValueError("tools: expected a list of JSON-schema dicts (Python callables are not converted)")
        if not messages:
            raise ValueError("messages: cannot apply the chat template to an empty conversation")
        batched = isinstance(messages[0], (list, tuple))
        conversations = messages if batched else [messages]
        variables = _plain({**self.special_tokens_map, **kwargs})
        compiled = _compile_template(template)
        rendered = []
        for chat in conversations:
            # Drop None values (OpenAI-style content=None) as transformers does: templates handle a missing key.
            chat = _plain([{k: v for k, v in m.items() if v is not None} for m in chat])
            rendered.append(
                compiled.render(
                    messages=_alias_reasoning(chat),
                    tools=_plain(tools),
                    documents=_plain(documents),
                    add_generation_prompt=add_generation_prompt,
                    **variables,
                )
            )
        if not tokenize:
            return rendered if batched else rendered[0]
        out = self(
            rendered if batched else rendered[0],
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            add_special_tokens=False,
            return_tensors=return_tensors,
        )
        return out if return_dict else out["input_ids"]


def _clean_up_tokenization(text: str) -> str:
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


def _as_tensor(rows: list[list[int]], key: str, return_tensors: str):
    if len({len(r) for r in rows}) > 1:
        raise ValueError(
            f"{key}: sequences of different lengths cannot form one tensor; pass padding=True (and truncation=True)"
        )
    if return_tensors == "pt":
        import torch

        return torch.tensor(rows, dtype=torch.long)
    if return_tensors == "np":
        import numpy as np

        return np.array(rows, dtype=np.int64)
    raise ValueError(f"return_tensors: expected None, 'pt' or 'np', got {return_tensors!r}")
