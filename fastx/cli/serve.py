"""`fastx serve`: an OpenAI-compatible HTTP server (completions, chat, embeddings) on one paged engine."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fastx.cli.common import PROG, QUANTIZATION_HELP, QUANTIZATIONS, UsageError, default_device

NAME = "serve"
HELP = "OpenAI-compatible server (needs the serve extra)"
DESCRIPTION = (
    "Serve a model over HTTP with OpenAI's API: /v1/completions, /v1/chat/completions\n"
    "(streaming with server-sent events), /v1/embeddings, /v1/models, /health and\n"
    "/metrics (Prometheus). Requests from all clients share one continuous batch.\n"
    "MODEL: a Hub id, checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct);\n"
    'an encoder (BERT family) serves /v1/embeddings only. Needs `pip install "fastx[serve]"`.'
)
EPILOG = (
    "examples:\n  fastx serve\n  fastx serve ./my-llama --port 8080 --api-key secret\n"
    "  fastx serve --embedding-model sentence-transformers/all-MiniLM-L6-v2\n\n"
    "then, with the openai client:\n"
    '  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused").chat.completions.create(...)'
)
ENCODER_TYPES = ("bert", "roberta", "distilbert")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help="what to serve (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--api-key", default=os.environ.get("FASTX_API_KEY"), help="require `Authorization: Bearer KEY` on /v1"
    )
    parser.add_argument("--served-model-name", help="the name clients pass as `model` (default: MODEL as given)")
    parser.add_argument("--embedding-model", help="also serve this encoder on /v1/embeddings")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights' dtype (default: the device's)")
    engine = parser.add_argument_group("engine (as fastx.LLM's arguments)")
    engine.add_argument("--max-num-seqs", type=int, default=256, help="sequences in one batch at most (256)")
    engine.add_argument("--max-num-batched-tokens", type=int, default=8192, help="tokens in one step at most (8192)")
    engine.add_argument("--block-size", type=int, default=16, help="tokens per KV block (16)")
    engine.add_argument("--num-kv-blocks", type=int, help="KV blocks (default: from --kv-cache-memory)")
    engine.add_argument("--kv-cache-memory", type=int, help="KV-cache bytes (default: 1 GiB on a CPU, 85%% free GPU)")
    engine.add_argument(
        "--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True, help="share prompt prefixes"
    )
    engine.add_argument("--pack-weights", action="store_true", help="CPU fp32: oneDNN-packed projection weights")
    engine.add_argument("--quantization", choices=QUANTIZATIONS, help=QUANTIZATION_HELP)
    engine.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="split the model across N processes, one GPU each (1)"
    )
    engine.add_argument("--seed", type=int, default=0, help="seed of requests that bring none (0)")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-waiting-requests", type=int, default=512, help="queued requests before 503 (512)")
    limits.add_argument("--max-body-bytes", type=int, default=4 << 20, help="request body limit, 413 past it (4 MiB)")
    parser.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info", help="uvicorn's"
    )


def _check_args(args) -> None:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0-65535, got {args.port}")
    for flag in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_waiting_requests", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {getattr(args, flag)}")
    for flag in ("num_kv_blocks", "kv_cache_memory"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: expected an integer >= 1, got {value}")
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError("--api-key: expected a non-empty key")


def _is_encoder(model: str) -> bool:
    """True for a checkpoint whose config.json names an encoder family (served on /v1/embeddings)."""
    from fastx.checkpoints.gguf import resolve_gguf_file
    from fastx.checkpoints.hub import read_json, resolve_checkpoint

    if resolve_gguf_file(model) is not None:
        return False
    return read_json(resolve_checkpoint(model) / "config.json").get("model_type") in ENCODER_TYPES


def _default_name(model: str) -> str:
    path = Path(model)
    return path.name.split(".")[0] if path.suffix == ".gguf" else model


def _build(args):
    """Load what is served; returns the app, a one-line description and the engine loop (None: encoder only)."""
    from fastx.checkpoints.defaults import default_generation_model
    from fastx.engine.llm import LLM
    from fastx.serve.app import ServedModels, build_app
    from fastx.serve.bridge import EngineLoop
    from fastx.serve.completions import Generation
    from fastx.serve.embeddings import Embedder
    from fastx.serve.metrics import ServerMetrics

    model = args.model or default_generation_model()
    name = args.served_model_name or (args.model if args.model else _default_name(model))
    served = ServedModels(ServerMetrics(), api_key=args.api_key, max_body_bytes=args.max_body_bytes)
    embedding = args.embedding_model
    if _is_encoder(model):
        if embedding is not None:
            raise UsageError(f"--embedding-model: {model} is an encoder already; serve one encoder at a time")
        embedding, embedding_name = model, name
    else:
        llm = LLM(
            model,
            dtype=None if args.dtype == "auto" else args.dtype,
            device=default_device(),
            block_size=args.block_size,
            num_kv_blocks=args.num_kv_blocks,
            kv_cache_memory=args.kv_cache_memory,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            enable_prefix_caching=args.enable_prefix_caching,
            seed=args.seed,
            pack_weights=args.pack_weights,
            tensor_parallel_size=args.tensor_parallel_size,
            quantization=args.quantization,
        )
        bridge = EngineLoop(llm.engine, served.metrics, args.max_waiting_requests)
        served.generation = Generation(bridge, llm.get_tokenizer(), name)
        embedding_name = _default_name(embedding) if embedding else None
    if embedding is not None:
        if embedding_name in served.names():
            raise UsageError(f"--embedding-model: its name {embedding_name!r} is the generation model's too")
        served.embedder, served.embedding_name = Embedder(embedding, default_device()), embedding_name
    bridge = served.generation.bridge if served.generation is not None else None
    return build_app(served), ", ".join(served.names()), bridge


def run(args) -> int:
    _check_args(args)
    # OpenMP's threads spin between torch ops by default and starve the HTTP thread of the CPU: 64
    # concurrent clients of a tiny model took 34 s on 2 cores that way, 6 s with passive waits.
    # Read once, when torch loads its OpenMP runtime, so it is set before anything imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import importlib.util

    needed = ("fastapi", "uvicorn", "pydantic", "prometheus_client")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f'fastx serve needs {", ".join(missing)}: pip install "fastx[serve]"')
    import uvicorn

    app, names, bridge = _build(args)
    sys.stderr.write(f"{PROG}: serving {names} on http://{args.host}:{args.port}/v1\n")
    sys.stderr.flush()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if bridge is None:  # an encoder alone: its batches run in uvicorn's worker threads
        server.run()
        return 0 if server.started else 1
    return _serve_with_engine_on_main_thread(server, bridge)


def _serve_with_engine_on_main_thread(server, bridge) -> int:
    """uvicorn on a thread, the engine loop on this (main) thread: see EngineLoop.claim_current_thread.

    uvicorn installs no signal handlers off the main thread, so SIGINT and SIGTERM are taken here
    and do what its own handlers do: a graceful shutdown, after which the loop stops (the app's
    lifespan calls bridge.stop()). If the HTTP side ends on its own (the port is taken), the loop
    stops too and the exit status is 1."""
    import signal
    import threading

    def serve_http() -> None:
        try:
            server.run()
        finally:
            bridge.stop()

    def shut_down(signum, frame) -> None:
        server.should_exit = True

    bridge.claim_current_thread()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, shut_down)
    http = threading.Thread(target=serve_http, name="fastx-http")
    http.start()
    bridge.run_here()
    http.join()
    return 0 if server.started else 1
