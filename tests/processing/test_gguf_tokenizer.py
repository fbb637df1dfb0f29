"""fastx.processing.gguf_tokenizer against transformers' GGUF tokenizer on the same files.

SmolLM2-135M-Instruct's GGUF (byte-level BPE, llama-bpe split, chat template) and a synthetic
sentencepiece-style file written with the `gguf` package (TinyLlama / Llama-2 files are built that way).
"""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from fastx.processing import AutoTokenizer  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:", "Ünïcödé: 你好, мир! 🤗 1234567"]
TEXTS = [
    *PROMPTS,
    "  leading spaces, trailing\t\ttabs  \n\n\nnewlines",
    "x = {'a': [1, 2.5e-3], \"b\": None}  # comment\r\n\tprint(x['a'][0] ** 2)",
    "<|im_start|>user\nHi<|im_end|> literal special tokens <|endoftext|>",
    "Ж ｆｕｌｌｗｉｄｔｈ ﬁ ligature, combining é and emoji 👩‍👩‍👧 ∑∞",
]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2? Explain ✓"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
]


@pytest.fixture(scope="module")
def tokenizers_pair(smollm2_gguf, smollm2_checkpoint):
    return AutoTokenizer.from_pretrained(smollm2_gguf), transformers.AutoTokenizer.from_pretrained(smollm2_checkpoint)


def test_tokenizer_ids_equal_transformers(tokenizers_pair):
    ours, theirs = tokenizers_pair
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert len(ours) == len(theirs) == 49152
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids) == theirs.decode(ids) == text
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert ours(TEXTS[:2], padding=True)["input_ids"] == theirs(TEXTS[:2], padding=True)["input_ids"]


def test_chat_template_from_gguf(tokenizers_pair):
    ours, theirs = tokenizers_pair
    for messages in (CHAT, CHAT[1:2]):  # with a system message, and the template's default one
        text = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<|im_start|>assistant\n")
        ids = ours.apply_chat_template(messages, add_generation_prompt=True)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_from_folder_and_gguf_file(smollm2_gguf, tokenizers_pair):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert tokenizer(TEXTS[-1])["input_ids"] == tokenizers_pair[0](TEXTS[-1])["input_ids"]


def _write_sentencepiece_gguf(path):
    """A GGUF whose vocabulary is sentencepiece-style (tokenizer.ggml.model "llama", as in TinyLlama or
    Llama-2 files): <unk> <s> </s>, the 256 byte-fallback tokens, then "▁"-spelled pieces ranked by score."""
    pieces = [
        "▁",
        "t",
        "h",
        "e",
        "a",
        "c",
        "o",
        "n",
        "s",
        "i",
        "d",
        "g",
        "r",
        "▁t",
        "he",
        "▁the",
        "▁c",
        "at",
        "▁cat",
        "on",
        "▁on",
        "▁s",
        "it",
        "▁sit",
        "▁a",
        "in",
        "▁in",
        "▁d",
        "og",
        "▁dog",
        "er",
        "▁h",
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_context_length(64)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i) for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))  # unknown, control, byte, normal
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "text",
    ["the cat sat on the dog", " the  cat", "thecat in", "héllo wörld 🤗", "\tthe\ncat  ", "a", "</s> the <s>", ""],
)
def test_sentencepiece_gguf_tokenizer_equals_transformers(tmp_path, text):
    """Merges from scores, byte fallback for what the vocabulary lacks, "▁" for spaces, BOS added."""
    from fastx.processing.gguf_tokenizer import load_gguf_tokenizer

    path = _write_sentencepiece_gguf(tmp_path / "sentencepiece.gguf")
    ours = load_gguf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    ids = ours(text)["input_ids"]
    assert ids == theirs(text)["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
