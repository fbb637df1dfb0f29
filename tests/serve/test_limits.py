"""The server's limits answer as OpenAI's API does: 503 when the queue is full, 413 past the body limit."""

import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

MODEL = "tiny"
BODY_LIMIT = 4096


@pytest.fixture(scope="module")
def server(start_server, tiny_llama):
    args = [tiny_llama, "--served-model-name", MODEL, "--dtype", "float32", "--num-kv-blocks", 64]
    args += ["--max-num-seqs", 1, "--max-waiting-requests", 1, "--max-body-bytes", BODY_LIMIT]
    server = start_server(args)
    yield server
    server.stop()


def _wait_for(server, name, value, timeout=20.0):
    deadline = time.monotonic() + timeout
    while server.metrics()[name] != value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.02)


def test_a_full_queue_is_503_and_the_queued_requests_still_complete(server):
    url = server.url + "/v1/completions"
    long = {"model": MODEL, "prompt": "running", "max_tokens": 200, "ignore_eos": True, "stream": True}
    queued_result = {}

    def queued():
        body = {"model": MODEL, "prompt": "queued", "max_tokens": 5, "ignore_eos": True}
        queued_result["response"] = httpx.post(url, json=body, timeout=120)

    with httpx.stream("POST", url, json=long, timeout=120) as running:
        lines = running.iter_lines()
        next(lines)  # the one running slot is taken
        thread = threading.Thread(target=queued)
        thread.start()
        _wait_for(server, "fastx_requests_waiting", 1)
        refused = httpx.post(url, json={"model": MODEL, "prompt": "one too many"}, timeout=30)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "queue_full" and error["type"] == "service_unavailable_error"
    thread.join(timeout=120)  # leaving the stream aborted it: the queued request runs
    response = queued_result["response"]
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 5
    _wait_for(server, "fastx_kv_blocks_used", 0)


def test_a_body_over_the_limit_is_413_declared_or_chunked(server):
    url = server.url + "/v1/completions"
    body = b'{"model": "tiny", "prompt": "' + b"a" * BODY_LIMIT + b'"}'
    r = httpx.post(url, content=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.post(url, content=(body[i : i + 512] for i in range(0, len(body), 512)))  # no Content-Length
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    small = httpx.post(url, json={"model": MODEL, "prompt": "fits", "max_tokens": 2})
    assert small.status_code == 200
