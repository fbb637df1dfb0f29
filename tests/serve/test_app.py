"""The server's endpoints and fields, driven by the official `openai` client and raw httpx.

One `fastx serve` subprocess (a tiny random Llama, fp32, with all-MiniLM-L6-v2 for embeddings and
an API key) serves the whole module; every answer is checked against fastx.LLM on the same
prompts in this process, so the server is judged by what the engine computes, not by itself.
"""

import asyncio
import base64
import time

import numpy as np
import pytest

from fastx import LLM, SamplingParams

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key-1"
MODEL = "tiny"
PROMPTS = ["the weather today is", "once upon a time there", "a b c d e f"]


@pytest.fixture(scope="module")
def server(start_server, tiny_llama, minilm):
    args = [tiny_llama, "--served-model-name", MODEL, "--dtype", "float32", "--num-kv-blocks", 1024]
    args += ["--embedding-model", minilm]
    server = start_server(args, api_key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(tiny_llama, dtype="float32", device="cpu", num_kv_blocks=1024)


def _post(server, path, body, headers=None):
    return httpx.post(server.url + path, json=body, headers=server.headers if headers is None else headers, timeout=60)


def _wait_idle(server, timeout=10.0) -> dict[str, float]:
    """/metrics once nothing runs or waits and no KV block is held (the engine frees within a step)."""
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        idle = m["fastx_kv_blocks_used"] == 0 and m["fastx_requests_running"] == 0
        if (idle and m["fastx_requests_waiting"] == 0) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_health_models_and_metrics_answer(server, client, minilm):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # no key needed to probe
    assert [m.id for m in client.models.list().data] == [MODEL, str(minilm)]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    m = server.metrics()
    for name in ("fastx_requests_running", "fastx_requests_waiting", "fastx_kv_blocks_used", "fastx_kv_blocks_free"):
        assert name in m
    assert "fastx_time_to_first_token_seconds_count" in m and "fastx_inter_token_latency_seconds_count" in m


def test_api_key_is_required_on_v1(server):
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = _post(server, "/v1/completions", body, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert _post(server, "/v1/completions", body).status_code == 200


def test_greedy_completions_equal_llm_generate(client, llm):
    ids = llm.get_tokenizer().encode("token ids as the prompt")
    prompts = [*PROMPTS, ids]
    params = SamplingParams(temperature=0, max_tokens=24)
    expected = llm.generate([*PROMPTS, {"prompt_token_ids": ids}], params, use_tqdm=False)
    out = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=24, temperature=0)
    single = client.completions.create(model=MODEL, prompt=ids, max_tokens=24, temperature=0)
    choices = sorted(out.choices, key=lambda c: c.index) + single.choices
    assert [c.text for c in choices] == [e.outputs[0].text for e in expected]
    assert [c.finish_reason for c in choices] == [e.outputs[0].finish_reason for e in expected]
    assert out.usage.prompt_tokens == sum(len(e.prompt_token_ids) for e in expected[:3])
    assert out.usage.completion_tokens == sum(len(e.outputs[0].token_ids) for e in expected[:3])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert single.usage.prompt_tokens == len(ids)
    assert out.object == "text_completion" and out.model == MODEL and out.id.startswith("cmpl-")
    assert len(prompts) == len(choices)


def test_streamed_chunks_concatenate_to_the_text(client):
    kwargs = {"model": MODEL, "prompt": PROMPTS[0], "max_tokens": 30, "temperature": 0}
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert len(chunks) >= 10, "not streamed token by token"
    *text_chunks, usage_chunk = chunks
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(c.usage is None for c in text_chunks)
    assert usage_chunk.choices == [] and usage_chunk.usage.model_dump() == whole.usage.model_dump()
    without_usage = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in without_usage) == whole.choices[0].text


def test_raw_stream_is_server_sent_events_ending_in_done(server):
    body = {"model": MODEL, "prompt": "x y", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]" and len(events) == 5


def test_chat_goes_through_the_chat_template(client, llm):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a colour"}]
    expected = llm.chat(messages, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=12, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected.outputs[0].text
    template_ids = llm.get_tokenizer().apply_chat_template(messages, add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(template_ids) == len(expected.prompt_token_ids)
    assert out.usage.completion_tokens == len(expected.outputs[0].token_ids)
    # max_tokens (deprecated) means the same; content parts join into one text
    text_parts = [{"type": "text", "text": "name a "}, {"type": "text", "text": "colour"}]
    parts = [messages[0], {"role": "user", "content": text_parts}]
    again = client.chat.completions.create(model=MODEL, messages=parts, max_tokens=12, temperature=0)
    assert again.choices[0].message.content == out.choices[0].message.content


def test_chat_stream_starts_with_the_role(client):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10, "temperature": 0}
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_n_seed_and_choice_numbering(client):
    kwargs = {"model": MODEL, "temperature": 1.0, "top_p": 0.9, "seed": 7, "max_tokens": 8}
    two = client.completions.create(prompt=PROMPTS[:2], n=2, **kwargs, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in two.choices) == [0, 1, 2, 3]
    assert two.usage.completion_tokens == 4 * 8
    by_index = {c.index: c.text for c in two.choices}
    # choices 2 and 3 are prompt 1's two samples: the same seed gives them alone
    alone = client.completions.create(prompt=PROMPTS[1], n=2, **kwargs, extra_body={"ignore_eos": True})
    assert {c.index: c.text for c in alone.choices} == {0: by_index[2], 1: by_index[3]}
    repeat = client.completions.create(prompt=PROMPTS[:2], n=2, **kwargs, extra_body={"ignore_eos": True})
    assert {c.index: c.text for c in repeat.choices} == by_index
    other = client.completions.create(prompt=PROMPTS[:2], n=2, **{**kwargs, "seed": 8}, extra_body={"ignore_eos": True})
    assert {c.index: c.text for c in other.choices} != by_index


def test_sampling_fields_map_onto_sampling_params(client, llm):
    fields = {"presence_penalty": 1.5, "frequency_penalty": 0.7, "temperature": 0.8, "top_p": 0.8, "seed": 3}
    extra = {"top_k": 20, "min_tokens": 4, "repetition_penalty": 1.2}
    params = SamplingParams(max_tokens=16, **fields, **extra)
    expected = llm.generate(PROMPTS[2], params, use_tqdm=False)[0].outputs[0]
    out = client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=16, **fields, extra_body=extra)
    assert out.choices[0].text == expected.text
    assert out.usage.completion_tokens == len(expected.token_ids)


def test_stop_strings_and_stop_token_ids(client, llm):
    base = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0).choices[0]
    words = base.text.split()
    stop = words[len(words) // 2]
    cut = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0, stop=[stop, "zzzz"])
    assert cut.choices[0].text == base.text[: base.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text
    third = llm.generate(PROMPTS[1], SamplingParams(temperature=0, max_tokens=20), use_tqdm=False)[0].outputs[0]
    stop_id = third.token_ids[2]
    by_id = client.completions.create(
        model=MODEL, prompt=PROMPTS[1], max_tokens=20, temperature=0, extra_body={"stop_token_ids": [stop_id]}
    )
    assert by_id.choices[0].finish_reason == "stop" and by_id.usage.completion_tokens == 3


def test_completion_logprobs_equal_the_engines(client, llm):
    out = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=6, temperature=0, logprobs=3)
    expected = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=6, logprobs=3), use_tqdm=False)
    expected = expected[0].outputs[0]
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    for got, token, entry in zip(lp.token_logprobs, expected.token_ids, expected.logprobs):
        assert got == pytest.approx(entry[token], abs=1e-5)
    for top, entry in zip(lp.top_logprobs, expected.logprobs):
        assert len(top) == 3
        assert sorted(top.values(), reverse=True) == pytest.approx(sorted(entry.values(), reverse=True)[:3], abs=1e-5)
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_chat_logprobs_and_top_logprobs(client):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    out = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 5
    for item in content:
        assert len(item.top_logprobs) == 2 and item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)  # greedy takes the top token
        assert bytes(item.bytes).decode() == item.token
    assert "".join(item.token for item in content).strip() != ""
    assert client.chat.completions.create(**kwargs).choices[0].logprobs is None


@pytest.mark.parametrize(
    "path, change, param",
    [
        ("/v1/completions", {"temperature": "hot"}, "temperature"),
        ("/v1/completions", {"n": 0}, "n"),
        ("/v1/completions", {"top_p": 1.5}, "top_p"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": [10**9]}, "prompt"),
        ("/v1/completions", {"stop": ""}, "stop"),
        ("/v1/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"logit_bias": {"5": 1.0}}, "logit_bias"),
        ("/v1/completions", {"bogus_field": 1}, "bogus_field"),
        ("/v1/completions", {"top_k": -7}, "top_k"),
        ("/v1/completions", {"min_tokens": 50, "max_tokens": 5}, "min_tokens"),
        ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, "tools"),
        ("/v1/chat/completions", {"model": "minilm-as-generator"}, "model"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(server, path, change, param, minilm):
    if path == "/v1/completions":
        body = {"model": MODEL, "prompt": "x"}
    else:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    body.update(change)
    if body["model"] == "minilm-as-generator":
        body["model"] = str(minilm)
    before = server.metrics()["fastx_prompt_tokens_total"]
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param), error["message"]
    assert server.metrics()["fastx_prompt_tokens_total"] == before  # nothing reached the engine


def test_unknown_model_body_and_prompt_limits(server, client):
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-4", prompt="x")
    assert info.value.body["code"] == "model_not_found"
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": list(range(5, 305))})  # context is 256
    assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded"
    big = {"model": MODEL, "prompt": "word " * (1 << 20)}  # over the 4 MiB default
    r = _post(server, "/v1/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers=server.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(server.url + "/v1/nothing-here", headers=server.headers).status_code == 404


def test_embeddings_equal_embed_texts_in_both_encodings(client, server, minilm):
    from fastx.pipelines.sentence_embeddings import embed_texts

    texts = ["A cat sits on the mat.", "Paris is the capital of France.", "short"]
    expected = embed_texts(str(minilm), texts).numpy()
    out = client.embeddings.create(model=str(minilm), input=texts)  # the client asks for base64 and decodes it
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    raw = _post(server, "/v1/embeddings", {"model": str(minilm), "input": texts[0], "encoding_format": "float"}).json()
    np.testing.assert_allclose(raw["data"][0]["embedding"], expected[0], rtol=0, atol=1e-6)
    b64 = _post(server, "/v1/embeddings", {"model": str(minilm), "input": texts, "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(b64["data"][1]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, got[1])
    from fastx.processing import AutoTokenizer

    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(minilm)(texts)["input_ids"])
    assert out.usage.prompt_tokens == out.usage.total_tokens == tokens
    r = _post(server, "/v1/embeddings", {"model": MODEL, "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = _post(server, "/v1/embeddings", {"model": str(minilm), "input": [1, 2]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_a_client_leaving_a_stream_aborts_it(server):
    before = server.metrics().get('fastx_requests_finished_total{finish_reason="abort"}', 0.0)
    body = {"model": MODEL, "prompt": "long", "max_tokens": 240, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    m = _wait_idle(server)
    assert m["fastx_kv_blocks_used"] == 0 and m["fastx_requests_running"] == 0
    assert m['fastx_requests_finished_total{finish_reason="abort"}'] == before + 1
    assert m["fastx_generation_tokens_total"] > 0


def test_a_client_leaving_a_plain_request_aborts_it(server):
    before = server.metrics().get('fastx_requests_finished_total{finish_reason="abort"}', 0.0)
    body = {"model": MODEL, "prompt": "long", "max_tokens": 250, "ignore_eos": True, "n": 16}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, headers=server.headers, timeout=0.3)
    m = _wait_idle(server)
    assert m["fastx_kv_blocks_used"] == 0
    assert m['fastx_requests_finished_total{finish_reason="abort"}'] == before + 1


def test_the_bench_client_load_counts_what_the_server_made(server, client):
    """fastx bench serve's load generator, at concurrency 4 against this server."""
    from fastx.cli.bench_serve import _level

    row = asyncio.run(_level(server.url, MODEL, 4, 8, 6, headers=server.headers))
    assert row["requests"] == 8 and 0 < row["output_tokens"] <= 8 * 6
    assert row["output_tokens_per_s"] == pytest.approx(row["output_tokens"] / row["seconds"])
    assert 0 < row["ttft_p50_s"] <= row["ttft_p99_s"] and 0 < row["itl_p50_s"] <= row["itl_p99_s"]
