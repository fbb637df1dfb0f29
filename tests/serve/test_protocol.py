"""The request schema: which bodies pass, what SamplingParams they become, and how a refusal names its field."""

import json

import pytest
from pydantic import ValidationError

from fastx.serve.errors import APIError, format_validation_error, from_engine_error
from fastx.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

USER = [{"role": "user", "content": "hi"}]


def _error(schema, body) -> APIError:
    try:
        schema.model_validate_json(json.dumps(body) if not isinstance(body, str) else body).sampling_params()
    except ValidationError as exc:
        return format_validation_error(exc.errors())
    except APIError as exc:
        return exc
    raise AssertionError(f"{body} was accepted")


@pytest.mark.parametrize(
    "prompt, expected",
    [("text", ["text"]), (["a", "b"], ["a", "b"]), ([1, 2, 3], [[1, 2, 3]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_the_four_prompt_forms(prompt, expected):
    assert CompletionRequest(model="m", prompt=prompt).prompts() == expected


def test_completion_fields_become_sampling_params():
    body = {"model": "m", "prompt": "x", "n": 3, "temperature": 0, "top_p": 0.5, "stop": "\n", "seed": 4}
    body |= {"presence_penalty": 1, "frequency_penalty": -1, "logprobs": 2, "top_k": 5, "ignore_eos": True}
    p = CompletionRequest.model_validate_json(json.dumps(body)).sampling_params()
    assert (p.n, p.temperature, p.top_p, p.stop_strings, p.seed) == (3, 0.0, 0.5, ["\n"], 4)
    assert (p.presence_penalty, p.frequency_penalty, p.logprobs, p.top_k, p.ignore_eos) == (1, -1, 2, 5, True)
    assert p.max_tokens == 16  # OpenAI's completions default


def test_chat_max_completion_tokens_wins_and_logprobs_map():
    req = ChatCompletionRequest(model="m", messages=USER, max_tokens=9, max_completion_tokens=4, logprobs=True)
    assert req.sampling_params().max_tokens == 4 and req.sampling_params().logprobs == 0
    req = ChatCompletionRequest(model="m", messages=USER, logprobs=True, top_logprobs=3)
    assert req.sampling_params().logprobs == 3 and req.sampling_params().max_tokens is None
    assert ChatCompletionRequest(model="m", messages=USER).sampling_params().logprobs is None


def test_content_parts_join_and_names_pass_to_the_template():
    parts = [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": parts, "name": "ann"}])
    assert req.conversation() == [{"role": "user", "content": "a b", "name": "ann"}]


@pytest.mark.parametrize(
    "schema, body, param, code",
    [
        (CompletionRequest, {"model": "m", "prompt": "x", "temperature": "1"}, "temperature", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": True}, "max_tokens", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": [1, "a"]}, "prompt", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": "x", "stop": ["a"] * 17}, "stop", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": "x", "best_of": 3}, "best_of", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": "x", "suffix": "s"}, "suffix", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": "x", "top_k": -3}, "top_k", "invalid_value"),
        (CompletionRequest, {"model": "m", "prompt": "x", "unknown": 1}, "unknown", "unknown_field"),
        (CompletionRequest, {"prompt": "x"}, "model", "missing"),
        (CompletionRequest, "[1, 2]", None, "invalid_value"),
        (CompletionRequest, "{oops", None, "invalid_json"),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "invalid_value",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": USER, "tool_choice": "auto"},
            "tool_choice",
            "invalid_value",
        ),
        (
            ChatCompletionRequest,
            {"model": "m", "messages": USER, "response_format": {"type": "json_object"}},
            "response_format.type",
            "invalid_value",
        ),
        (ChatCompletionRequest, {"model": "m", "messages": USER, "top_logprobs": 1}, "top_logprobs", "invalid_value"),
        (EmbeddingRequest, {"model": "m", "input": ["a", ""]}, "input", "invalid_value"),
        (EmbeddingRequest, {"model": "m", "input": "a", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ],
)
def test_a_refusal_names_the_field(schema, body, param, code):
    if schema is EmbeddingRequest:
        with pytest.raises(ValidationError) as info:
            schema.model_validate_json(json.dumps(body))
        error = format_validation_error(info.value.errors())
    else:
        error = _error(schema, body)
    assert error.status == 400 and error.param == param and error.code == code
    assert error.body()["error"]["type"] == "invalid_request_error"
    if param:
        assert error.message.startswith(param + ": "), error.message


def test_engine_messages_are_renamed_to_the_request_field():
    error = from_engine_error(ValueError("prompt_token_ids: [99] outside the vocabulary [0, 10)"), "prompt")
    assert (error.param, error.message) == ("prompt", "prompt: [99] outside the vocabulary [0, 10)")
    error = from_engine_error(ValueError("SamplingParams.min_tokens: expected at most 5, got 9"), "prompt")
    assert (error.param, error.message) == ("min_tokens", "min_tokens: expected at most 5, got 9")
