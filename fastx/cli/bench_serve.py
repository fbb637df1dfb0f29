"""`fastx bench serve`: the same streaming chat load against `fastx serve` and `transformers serve`.

Each server is started here as a user starts it and warmed up with one request; then at each
level, one server after another (in an order rotated per level), `concurrency` clients stream
chat completions back to back; only the server being driven computes. Per level: requests/s,
output tokens/s (the servers' own `usage` counts), time to first token and inter-token latency
(p50/p99, from the client's clock). The peer is transformers' server with its continuous
batching (`--continuous-batching`). On a CPU (full runs) fastx also runs with `--pack-weights`,
its opt-in oneDNN-packed projection weights (twice their memory), reported as `fastx_packed`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

LEVELS = (1, 4, 16)
TOPICS = ("the sea", "a lost key", "a robot", "autumn", "a city at night", "a dragon", "a long train ride", "bread")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


async def _one_request(http, url: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    stamps, usage = [], None
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise OSError(f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    tokens = usage if usage is not None else len(stamps)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft": stamps[0] - start if stamps else None, "gaps": gaps, "tokens": tokens}


async def _level(
    url: str, model: str, concurrency: int, num_requests: int, max_tokens: int, headers: dict | None = None
) -> dict[str, Any]:
    import httpx

    prompts = [f"Write a short story about {TOPICS[i % len(TOPICS)]} ({i})." for i in range(num_requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    results = []

    async def client(http):
        while not queue.empty():
            results.append(await _one_request(http, url, model, queue.get_nowait(), max_tokens))

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits, headers=headers) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    return {
        "concurrency": concurrency,
        "requests": num_requests,
        "seconds": seconds,
        "output_tokens": sum(r["tokens"] for r in results),
        "requests_per_s": num_requests / seconds,
        "output_tokens_per_s": sum(r["tokens"] for r in results) / seconds,
        "ttft_p50_s": _percentile(ttfts, 50),
        "ttft_p99_s": _percentile(ttfts, 99),
        "itl_p50_s": _percentile(gaps, 50),
        "itl_p99_s": _percentile(gaps, 99),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], url: str, log_path: str, timeout: float = 600) -> subprocess.Popen:
    import httpx

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = open(log_path, errors="replace").read()[-2000:]
            raise OSError(f"the server exited with {proc.returncode}: {tail}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise OSError(
        f"the server was not healthy after {timeout:.0f} s: {open(log_path, errors='replace').read()[-2000:]}"
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _checkpoint_folder(model: str, workdir: str) -> str:
    """A GGUF converted once into a safetensors folder, so both servers load the same fp32 weights."""
    if not model.lower().endswith(".gguf"):
        return model
    import transformers
    from safetensors.torch import save_model

    folder, name = os.path.split(model)
    out = os.path.join(workdir, "checkpoint")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    os.makedirs(out, exist_ok=True)
    save_model(loaded, os.path.join(out, "model.safetensors"))
    loaded.config.__dict__.pop("quantization_config", None)
    loaded.config.architectures = [type(loaded).__name__]  # transformers serve picks its class from this
    loaded.config.save_pretrained(out)
    transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    return out


class _Server(NamedTuple):
    key: str  # its entry in the report
    label: str  # its name in the printed rows
    command: list[str]
    url: str
    model: str  # the `model` field its clients send


def _run_servers(
    servers: list[_Server], levels, max_tokens, requests_for, log, workdir
) -> dict[str, list[dict[str, Any]]]:
    """Start every server, warm each up, then run each level on each server in turn.

    An idle server computes nothing, so the ones not being driven do not share the CPU or GPU
    with the one that is; alternating the servers at every level spreads the machine's noise
    (shared machines drift by 30% within minutes) over all of them alike instead of favouring
    whichever ran in a quiet minute.
    """
    procs = []
    try:
        for server in servers:
            procs.append(_start(server.command, server.url, os.path.join(workdir, f"{server.key}.log")))
        for server in servers:
            asyncio.run(_level(server.url, server.model, 1, 1, 4))  # warm-up: lazy loading, first-call compilation
        rows: dict[str, list[dict[str, Any]]] = {server.key: [] for server in servers}
        for i, c in enumerate(levels):
            first = i % len(servers)
            for server in servers[first:] + servers[:first]:
                row = asyncio.run(_level(server.url, server.model, c, requests_for(c), max_tokens))
                log(_row_text(server.label, row))
                rows[server.key].append(row)
        return rows
    finally:
        for proc in procs:
            _stop(proc)


def _row_text(name: str, r: dict[str, Any]) -> str:
    def ms(x):
        return f"{1000 * x:8.1f}" if x is not None else "       -"

    return (
        f"{name:<22} c={r['concurrency']:<3} {r['requests_per_s']:7.2f} req/s {r['output_tokens_per_s']:8.1f} tok/s"
        f"  TTFT p50/p99 {ms(r['ttft_p50_s'])} {ms(r['ttft_p99_s'])} ms  ITL p50/p99 {ms(r['itl_p50_s'])}"
        f" {ms(r['itl_p99_s'])} ms"
    )


def bench_serve(model: str, device: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both servers on `model`, the same client load at each concurrency level; the ratio is fastx / peer."""
    import importlib.util

    levels = (1, 4) if quick else LEVELS
    max_tokens = 8 if quick else 48

    def requests_for(c: int) -> int:
        return max(2 * c, 4) if quick else max(2 * c, 8)

    dtype = "float32" if device == "cpu" else "bfloat16"
    report: dict[str, Any] = {"workload": "serve: streaming chat", "max_tokens": max_tokens, "device": device}
    with tempfile.TemporaryDirectory(prefix="fastx-bench-serve-") as workdir:
        has_peer = importlib.util.find_spec("transformers") is not None and not quick
        folder = _checkpoint_folder(model, workdir) if has_peer else model

        def fastx_server(key: str, label: str, *flags: str) -> _Server:
            port = _free_port()
            command = [sys.executable, "-m", "fastx", "serve", folder, "--port", str(port), "--dtype", dtype]
            command += ["--served-model-name", folder, "--log-level", "warning", *flags]
            if device != "cpu":  # the servers are up together: fastx's default KV cache takes 85% of free GPU memory
                command += ["--kv-cache-memory", str(2 << 30)]  # ~90k SmolLM2 tokens in bf16, far more than this load
            return _Server(key, label, command, f"http://127.0.0.1:{port}", folder)

        servers = [fastx_server("fastx", "fastx serve")]
        if device == "cpu" and not quick:
            servers.append(fastx_server("fastx_packed", "fastx --pack-weights", "--pack-weights"))
        if has_peer:
            import transformers

            port = _free_port()
            entry = "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"
            peer = [sys.executable, "-c", entry, "serve", folder, "--port", str(port)]
            peer += ["--continuous-batching", "--device", device, "--dtype", dtype, "--log-level", "warning"]
            report["peer_name"] = f"transformers {transformers.__version__}"
            servers.append(_Server("peer", report["peer_name"], peer, f"http://127.0.0.1:{port}", folder))
        rows = _run_servers(servers, levels, max_tokens, requests_for, log, workdir)
    report["fastx"] = rows["fastx"]
    report["fastx_packed"] = rows.get("fastx_packed")
    report["peer"] = rows.get("peer")
    if report["peer"] is None:
        log("serve: the transformers peer runs without --quick, with transformers installed")
        return report
    for key, label in (("fastx", "fastx"), ("fastx_packed", "fastx --pack-weights")):
        for ours, theirs in zip(report[key] or [], report["peer"]):
            ours["tokens_per_s_ratio"] = ours["output_tokens_per_s"] / theirs["output_tokens_per_s"]
            log(f"c={ours['concurrency']:<3} {label} / peer output tokens/s: {ours['tokens_per_s_ratio']:.2f}x")
    return report
