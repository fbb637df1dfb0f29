"""text-generation on the paged engine against transformers' pipeline (greedy: the same text).

A tiny random Llama on SmolLM2's tokenizer (byte-level BPE with a chat template) for every
parameter, and SmolLM2-135M-Instruct's real weights once (fastx's default model, converted from its
GGUF by transformers) against transformers' pipeline on the same folder.
"""

import pytest
import torch

import fastx
from tests.pipelines.conftest import assert_same, transformers

PROMPTS = ["The capital of France is", "Three primary colours:", "def fibonacci(n):"]
CHATS = [
    [{"role": "user", "content": "Name a planet."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi"},
    ],
]
GREEDY = {"do_sample": False, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def tiny_llama(smollm2_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    # the session's SmolLM2 conversion (shared with the real-weights test) holds the tokenizer files
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_checkpoint)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        num_hidden_layers=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    transformers.LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair(tiny_llama):
    return fastx.pipeline("text-generation", model=tiny_llama), transformers.pipeline(
        "text-generation", str(tiny_llama)
    )


@pytest.mark.parametrize(
    "kwargs",
    [GREEDY, {**GREEDY, "return_full_text": False}, {**GREEDY, "return_tensors": True}, {**GREEDY, "max_length": 14}],
    ids=["full", "new", "tensors", "max_length"],
)
def test_greedy_text_equals_transformers(pair, kwargs):
    ours, theirs = pair
    assert_same(ours(PROMPTS, **kwargs), [theirs(p, **kwargs) for p in PROMPTS])
    assert_same(ours(PROMPTS[0], **kwargs), theirs(PROMPTS[0], **kwargs))


def test_chats_equal_transformers(pair):
    ours, theirs = pair
    assert_same(ours(CHATS[0], **GREEDY), theirs(CHATS[0], **GREEDY))  # one chat: a list of messages
    assert_same(ours(CHATS, **GREEDY), [theirs(c, **GREEDY) for c in CHATS])  # the second continues "Hi"
    assert ours(CHATS[0], **GREEDY)[0]["generated_text"][-1]["role"] == "assistant"


def test_batched_and_streamed_inputs_agree(pair):
    ours, _ = pair
    one_by_one = [ours(p, **GREEDY) for p in PROMPTS]
    assert_same(ours(PROMPTS, batch_size=2, **GREEDY), one_by_one)
    assert_same(list(ours((p for p in PROMPTS), **GREEDY)), one_by_one)


def test_sampling_returns_the_requested_sequences(pair):
    ours, _ = pair
    out = ours(PROMPTS[0], do_sample=True, temperature=0.9, top_p=0.9, num_return_sequences=3, max_new_tokens=8)
    assert len(out) == 3 and all(r["generated_text"].startswith(PROMPTS[0]) for r in out)


def test_bad_parameters_are_named(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="unexpected argument"):
        ours("a", max_tokens=3)
    with pytest.raises(ValueError, match="return_full_text"):
        ours("a", return_full_text=True, return_tensors=True)
    with pytest.raises(ValueError, match="expected a string"):
        ours(3, **GREEDY)


def test_smollm2_real_weights_match_transformers(smollm2_checkpoint):
    # the weights of fastx's default model (its GGUF, as transformers converts it); test_factory checks the default
    ours = fastx.pipeline("text-generation", model=smollm2_checkpoint)
    theirs = transformers.pipeline("text-generation", str(smollm2_checkpoint))
    kwargs = {"do_sample": False, "max_new_tokens": 16}
    assert_same(ours(CHATS[0], **kwargs), theirs(CHATS[0], **kwargs))
