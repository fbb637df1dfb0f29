"""64 concurrent clients on one server: a quarter stream and leave early, some send bad requests.

The KV cache is kept small (24 blocks of 16 tokens) and the batch to 24 sequences, so under this
load requests wait, and running ones are preempted and recomputed, while clients leave mid-stream.
Afterwards every good request has exactly the tokens it asked for and /metrics shows no KV block
in use.
"""

import asyncio
import json
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

MODEL = "tiny"
CLIENTS = 64


@pytest.fixture(scope="module")
def server(start_server, tiny_llama):
    args = [tiny_llama, "--served-model-name", MODEL, "--dtype", "float32", "--num-kv-blocks", 24]
    server = start_server(args + ["--max-num-seqs", 24])
    yield server
    server.stop()


def _max_tokens(i: int) -> int:
    return 8 + (i * 7) % 33


async def _completion(client, i):
    out = await client.completions.create(
        model=MODEL, prompt=f"client {i} says", max_tokens=_max_tokens(i), extra_body={"ignore_eos": True}
    )
    return out.usage.completion_tokens, out.choices[0].finish_reason


async def _chat(client, i):
    out = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"hello from {i}"}],
        max_completion_tokens=_max_tokens(i),
        temperature=0.7,
        seed=i,
        extra_body={"ignore_eos": True},
    )
    return out.usage.completion_tokens, out.choices[0].finish_reason


async def _stream(client, i):
    stream = await client.completions.create(
        model=MODEL,
        prompt=f"stream {i}",
        max_tokens=_max_tokens(i),
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    token_chunks, usage, finish = 0, None, None
    async for chunk in stream:
        if chunk.choices:
            token_chunks += 1  # one token per chunk: each step adds one token to a sequence
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage.completion_tokens
    assert token_chunks == usage, (token_chunks, usage)
    return usage, finish


async def _leave_early(http, url, i):
    body = {"model": MODEL, "prompt": f"leaving {i}", "max_tokens": 200, "stream": True, "ignore_eos": True}
    async with http.stream("POST", url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        seen = 0
        async for line in r.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    return "left"


BAD = [
    ({"model": MODEL, "prompt": "x", "temperature": -1}, 400),
    ({"model": "other", "prompt": "x"}, 404),
    ({"model": MODEL, "prompt": list(range(1000, 1300))}, 413),
    ({"model": MODEL, "prompt": "x", "n": "two"}, 400),
]


async def _bad(http, url, i):
    body, status = BAD[i % len(BAD)]
    r = await http.post(url + "/v1/completions", content=json.dumps(body))
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    return "refused"


async def _load(server):
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    async with httpx.AsyncClient(timeout=300) as http:
        tasks, expected = [], []
        for i in range(CLIENTS):
            kind = i % 8
            if kind in (0, 1):
                tasks.append(_leave_early(http, server.url, i))
                expected.append("left")
            elif kind == 2:
                tasks.append(_bad(http, server.url, i))
                expected.append("refused")
            else:
                run = (_completion, _completion, _chat, _stream, _stream)[kind - 3]
                tasks.append(run(client, i))
                expected.append((_max_tokens(i), "length"))
        results = await asyncio.gather(*tasks)
    await client.close()
    return results, expected


def test_64_concurrent_clients_all_complete_and_leave_no_block_behind(server):
    results, expected = asyncio.run(_load(server))
    assert results == expected
    good = [e for e in expected if isinstance(e, tuple)]
    assert len(good) == 40 and expected.count("left") == 16 and expected.count("refused") == 8
    deadline = time.monotonic() + 10
    while True:
        m = server.metrics()
        if m["fastx_kv_blocks_used"] == 0 and m["fastx_requests_running"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert m["fastx_kv_blocks_used"] == 0 and m["fastx_kv_blocks_free"] == 24
    assert m["fastx_requests_running"] == 0 and m["fastx_requests_waiting"] == 0
    assert m['fastx_requests_finished_total{finish_reason="length"}'] == 40
    assert m['fastx_requests_finished_total{finish_reason="abort"}'] == 16
    assert m["fastx_generation_tokens_total"] >= sum(n for n, _ in good)
    assert m["fastx_time_to_first_token_seconds_count"] == 40 + 16
    assert m["fastx_preemptions_total"] > 0, "the load did not exercise preemption; shrink the cache"
    assert httpx.get(server.url + "/health").status_code == 200
