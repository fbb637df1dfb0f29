"""The FastAPI application: routes, the API key, the body limit, errors in OpenAI's shape.

Bodies are read and validated here rather than by FastAPI's parameter injection, so that the API
key is checked before a body is read, a body over the limit is refused (413) before it is held in
memory, and every error, pydantic's included, comes back in OpenAI's error shape naming the field.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastx.serve.bridge import EngineFailure, EngineLoop, QueueFull
from fastx.serve.completions import ClientGone, Generation
from fastx.serve.embeddings import Embedder, encode_vector
from fastx.serve.errors import APIError, format_validation_error, invalid
from fastx.serve.metrics import CONTENT_TYPE, ServerMetrics
from fastx.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

DEFAULT_MAX_BODY_BYTES = 4 << 20  # 4 MiB: ~1M tokens of text, far past any context fastx serves


@dataclass
class ServedModels:
    """What one server serves: a generation model, an embedding model, or both."""

    metrics: ServerMetrics
    generation: Generation | None = None
    embedder: Embedder | None = None
    embedding_name: str | None = None
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def names(self) -> list[str]:
        names = [self.generation.model_name] if self.generation else []
        return names + ([self.embedding_name] if self.embedder else [])


def _error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the body is {declared} bytes, the limit is {limit}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # chunked uploads declare no length: count as they come
            raise APIError(413, f"the body is over the limit of {limit} bytes", code="body_too_large")
    return bytes(body)


async def _parse(request: Request, served: ServedModels, schema: type[BaseModel]):
    raw = await _read_body(request, served.max_body_bytes)
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise format_validation_error(exc.errors()) from None


def build_app(served: ServedModels) -> FastAPI:
    bridge: EngineLoop | None = served.generation.bridge if served.generation else None

    @asynccontextmanager
    async def lifespan(app):
        if bridge is not None:
            bridge.start()
        try:
            yield
        finally:
            if bridge is not None:
                bridge.stop()

    app = FastAPI(title="fastx", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(
            APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        )

    def _authorize(request: Request) -> None:
        if served.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), served.api_key.encode()):
            message = "a valid API key is required: send the header `Authorization: Bearer <key>`"
            raise APIError(401, message, code="invalid_api_key")

    def _model(name: str, kind: str) -> None:
        if name not in served.names():
            raise APIError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
        if kind == "generation" and (served.generation is None or name != served.generation.model_name):
            raise invalid("model", f"`{name}` is an embedding model; it does not generate text")
        if kind == "embedding" and name != served.embedding_name:
            raise invalid("model", f"`{name}` generates text; it does not serve embeddings")

    # -- monitoring --------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if bridge is not None and not bridge.alive:
            return _error_response(APIError(503, "the engine loop is not running", code="engine_dead"))
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(served.metrics.exposition(), media_type=CONTENT_TYPE)

    # -- models ------------------------------------------------------------------------------------
    def _model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "fastx"}

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(request)
        return {"object": "list", "data": [_model_card(n) for n in served.names()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        _authorize(request)
        if name not in served.names():
            raise APIError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
        return _model_card(name)

    # -- generation ------------------------------------------------------------------------------
    async def _generate(request: Request, req, chat: bool):
        arrival = time.monotonic()
        _model(req.model, "generation")
        gen = served.generation
        if chat:
            prompts, param = [gen.chat_prompt(req)], "messages"
        else:
            prompts, param = gen.completion_prompts(req), "prompt"
        try:
            handle = await gen.submit(prompts, req, arrival, param)
        except QueueFull as exc:
            raise APIError(503, str(exc), code="queue_full") from None
        except EngineFailure as exc:
            raise APIError(503, str(exc), code="engine_unavailable") from None
        if req.stream:
            return StreamingResponse(gen.stream(handle, req, chat), media_type="text/event-stream")
        try:
            choices, usage = await gen.collect(handle, request.is_disconnected)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
        except EngineFailure as exc:
            raise APIError(500, str(exc), code="engine_error") from None
        build = gen.chat_response if chat else gen.completion_response
        return build(req, choices, usage)

    @app.post("/v1/completions")
    async def completions(request: Request):
        _authorize(request)
        return await _generate(request, await _parse(request, served, CompletionRequest), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _authorize(request)
        return await _generate(request, await _parse(request, served, ChatCompletionRequest), chat=True)

    # -- embeddings ------------------------------------------------------------------------------
    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        _authorize(request)
        req = await _parse(request, served, EmbeddingRequest)
        _model(req.model, "embedding")
        vectors, num_tokens = await asyncio.to_thread(served.embedder.embed, req.texts())
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": num_tokens, "total_tokens": num_tokens}
        return {"object": "list", "data": data, "model": req.model, "usage": usage}

    return app
