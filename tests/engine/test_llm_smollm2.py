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


def test_greedy_chat_tokens_equal_transformers(llm, smollm2_checkpoint):
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outputs = llm.chat(CHATS, params, use_tqdm=False)
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_checkpoint).eval()
    for out in outputs:
        with torch.no_grad():
            expected = reference.generate(torch.tensor([out.prompt_token_ids]), max_new_tokens=32, do_sample=False,
                                          eos_token_id=None, pad_token_id=0)[0, len(out.prompt_token_ids) :]  # fmt: skip
        assert out.outputs[0].token_ids == expected.tolist()
        assert out.outputs[0].text == llm.get_tokenizer().decode(expected, skip_special_tokens=True)


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
