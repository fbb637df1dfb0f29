"""SmolLM2-135M-Instruct's real weights: chat prompts, greedy, token for token against transformers."""

import pytest
import torch
import transformers

from fastx import LLM, SamplingParams

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]


@pytest.fixture(scope="module")
def llm(smollm2_checkpoint):
    return LLM(smollm2_checkpoint, dtype="float32", device="cpu", kv_cache_memory=256 << 20)


@pytest.fixture(scope="module")
def expected(llm, smollm2_checkpoint):
    """transformers' greedy continuation (32 tokens) of each chat prompt."""
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_checkpoint).eval()
    tokenizer = llm.get_tokenizer()
    continuations = []
    for chat in CHATS:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True)
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([ids]), max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
            )
        continuations.append(out[0, len(ids) :].tolist())
    return continuations


@pytest.mark.parametrize("pack_weights", [False, True], ids=["dense", "packed"])
def test_greedy_chat_tokens_equal_transformers(llm, smollm2_checkpoint, expected, pack_weights):
    """The three chats decode as one batch, so packed weights serve both prefill and decode."""
    engine = (
        LLM(smollm2_checkpoint, dtype="float32", device="cpu", kv_cache_memory=64 << 20, pack_weights=True)
        if pack_weights
        else llm
    )
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outputs = engine.chat(CHATS, params, use_tqdm=False)
    for out, tokens in zip(outputs, expected):
        assert out.outputs[0].token_ids == tokens
        assert out.outputs[0].text == llm.get_tokenizer().decode(tokens, skip_special_tokens=True)


def test_stream_yields_the_same_text_incrementally_and_close_aborts(llm):
    params = SamplingParams(temperature=0, max_tokens=12)
    prompt = "The three primary colours are"
    whole = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].text
    deltas = list(llm.stream(prompt, params))
    assert "".join(deltas) == whole and len(deltas) > 2
    free = llm.engine.block_manager.num_free_blocks
    stream = llm.stream(prompt, SamplingParams(temperature=0, max_tokens=100))
    next(stream)
    stream.close()
    assert llm.engine.block_manager.num_free_blocks == free and not llm.engine.requests


def test_eos_ends_a_chat_answer_with_reason_stop(llm):
    out = llm.chat(CHATS[0], SamplingParams(temperature=0, max_tokens=64), use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and "Paris" in out.text


@pytest.mark.parametrize("messages", ["hi", [], ["hi"], [[{"role": "user", "content": "a"}], "b"]])
def test_chat_refuses_what_is_not_a_conversation(llm, messages):
    with pytest.raises(ValueError, match="messages: expected"):
        llm.chat(messages, SamplingParams(max_tokens=2), use_tqdm=False)
