"""/v1/completions and /v1/chat/completions: prompts in, OpenAI-shaped responses or server-sent events out.

Both endpoints share everything but the shape of a choice: a completion choice carries `text`, a
chat choice a `message` (or, streamed, a `delta`). A request's choices are numbered prompt by
prompt, n per prompt, as OpenAI numbers them. `usage` counts every prompt token once per prompt
and every generated token of every choice, stop strings included in the count even where they are
cut from the text (the tokens were computed).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastx.serve.bridge import Delta, EngineLoop, RequestHandle, Usage
from fastx.serve.errors import APIError, from_engine_error, invalid
from fastx.serve.protocol import ChatCompletionRequest, CompletionRequest

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


class ClientGone(Exception):
    """The client closed the connection; its request was aborted."""


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    text_offset: int = 0  # characters before the next token, for completion logprobs


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


class Generation:
    """The generation endpoints of one served model."""

    def __init__(self, bridge: EngineLoop, tokenizer, model_name: str):
        self.bridge = bridge
        self.tokenizer = tokenizer
        self.model_name = model_name
        engine = bridge.engine
        self.max_model_len = engine.max_model_len  # constants of the engine: safe to read from this thread
        self.capacity_tokens = engine.capacity_tokens

    # -- prompts -----------------------------------------------------------------------------------
    def _check_length(self, ids: list[int], param: str) -> list[int]:
        if len(ids) >= self.max_model_len:
            raise APIError(
                413,
                f"{param}: {len(ids)} tokens, the model's context is {self.max_model_len} (one must be left to "
                "generate)",
                param=param,
                code="context_length_exceeded",
            )
        if len(ids) + 1 > self.capacity_tokens:
            raise APIError(
                413,
                f"{param}: {len(ids)} tokens do not fit the KV cache ({self.capacity_tokens} tokens)",
                param=param,
                code="context_length_exceeded",
            )
        return ids

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        prompts = []
        for prompt in req.prompts():
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise invalid("prompt", "this model has no tokenizer: send token ids")
                prompt = self.tokenizer.encode(prompt)
            prompts.append(self._check_length(list(prompt), "prompt"))
        return prompts

    def chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        if self.tokenizer is None:
            raise invalid("messages", "this model has no tokenizer (and so no chat template)")
        try:
            ids = self.tokenizer.apply_chat_template(
                req.conversation(), tokenize=True, add_generation_prompt=req.add_generation_prompt
            )
        except ValueError as exc:
            raise invalid("messages", str(exc)) from None
        except Exception as exc:  # a template's raise_exception ("roles must alternate") or a Jinja error
            raise invalid("messages", f"the chat template refused them: {exc}") from None
        return self._check_length(list(ids), "messages")

    async def submit(self, prompts: list[list[int]], req, arrival: float, param: str) -> RequestHandle:
        params = req.sampling_params()
        try:
            return await self.bridge.submit(prompts, params, arrival)
        except ValueError as exc:
            raise from_engine_error(exc, param) from None

    # -- logprobs ------------------------------------------------------------------------------------
    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.tokenizer is not None else f"token_id:{token}"

    @staticmethod
    def _top(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
        return sorted(entry.items(), key=lambda item: -item[1])[:k]

    def completion_logprobs(self, choice: _Choice, tokens: list[int], entries: list, k: int) -> dict[str, Any]:
        texts = [self._token_text(t) for t in tokens]
        offsets = []
        for text in texts:
            offsets.append(choice.text_offset)
            choice.text_offset += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [entry[t] for t, entry in zip(tokens, entries)],
            "top_logprobs": [{self._token_text(i): lp for i, lp in self._top(e, k)} for e in entries],
            "text_offset": offsets,
        }

    def chat_logprobs(self, tokens: list[int], entries: list, k: int) -> dict[str, Any]:
        def item(token: int, logprob: float) -> dict[str, Any]:
            text = self._token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        content = [
            {**item(t, entry[t]), "top_logprobs": [item(i, lp) for i, lp in self._top(entry, k)]}
            for t, entry in zip(tokens, entries)
        ]
        return {"content": content, "refusal": None}

    # -- responses -----------------------------------------------------------------------------------
    async def collect(self, handle: RequestHandle, is_disconnected) -> tuple[dict[int, _Choice], Usage]:
        """Await the request to its end; abort it if the client leaves first."""
        choices: dict[int, _Choice] = {}
        # Checked every DISCONNECT_POLL_S whether updates come faster than that or not: a check
        # only while waiting would never run when every step ends within the poll interval.
        next_check = time.monotonic() + DISCONNECT_POLL_S
        try:
            while True:
                task = asyncio.ensure_future(handle.next())
                while True:
                    await asyncio.wait({task}, timeout=max(next_check - time.monotonic(), 0))
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + DISCONNECT_POLL_S
                        if await is_disconnected():
                            task.cancel()
                            raise ClientGone()
                    if task.done():
                        break
                update = task.result()
                for delta in update.deltas:
                    self._accumulate(choices.setdefault(delta.choice, _Choice()), delta)
                if update.usage is not None:
                    return choices, update.usage
        finally:
            handle.abort()  # no-op once done

    @staticmethod
    def _accumulate(choice: _Choice, delta: Delta) -> None:
        choice.text.append(delta.text)
        choice.token_ids += delta.token_ids
        if delta.logprobs is not None:
            choice.logprobs += delta.logprobs
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason

    def completion_response(self, req: CompletionRequest, choices: dict[int, _Choice], usage: Usage) -> dict:
        out = []
        for index in sorted(choices):
            c = choices[index]
            logprobs = None
            if req.logprobs is not None:
                logprobs = self.completion_logprobs(_Choice(), c.token_ids, c.logprobs, req.logprobs)
            out.append(
                {"index": index, "text": "".join(c.text), "logprobs": logprobs, "finish_reason": c.finish_reason}
            )
        return self._envelope("cmpl", "text_completion") | {"choices": out, "usage": usage_json(usage)}

    def chat_response(self, req: ChatCompletionRequest, choices: dict[int, _Choice], usage: Usage) -> dict:
        out = []
        for index in sorted(choices):
            c = choices[index]
            logprobs = self.chat_logprobs(c.token_ids, c.logprobs, req.top_logprobs or 0) if req.logprobs else None
            message = {"role": "assistant", "content": "".join(c.text), "refusal": None, "tool_calls": None}
            out.append({"index": index, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason})
        return self._envelope("chatcmpl", "chat.completion") | {"choices": out, "usage": usage_json(usage)}

    def _envelope(self, prefix: str, obj: str, rid: str | None = None) -> dict[str, Any]:
        return {
            "id": rid or f"{prefix}-{uuid.uuid4().hex}",
            "object": obj,
            "created": int(time.time()),
            "model": self.model_name,
            "system_fingerprint": None,
        }

    # -- streams -------------------------------------------------------------------------------------
    async def stream(self, handle: RequestHandle, req, chat: bool) -> AsyncIterator[str]:
        """Server-sent events: a chunk per choice per step, the usage chunk if asked, then [DONE].

        Leaving the generator early (the client disconnected and the response was cancelled)
        aborts the request.
        """
        head = self._envelope("chatcmpl" if chat else "cmpl", "chat.completion.chunk" if chat else "text_completion")
        include_usage = req.include_usage
        choices: dict[int, _Choice] = {}

        def chunk(choice_list: list[dict], usage=None) -> str:
            body = head | {"choices": choice_list}
            if include_usage:
                body["usage"] = usage
            return sse(body)

        try:
            if chat:
                for index in range(req.n):
                    role = {"role": "assistant", "content": ""}
                    yield chunk([{"index": index, "delta": role, "logprobs": None, "finish_reason": None}])
            while True:
                try:
                    update = await handle.next()
                except Exception as exc:  # the engine failed mid-stream: the status line went out long ago
                    yield sse(APIError(500, str(exc), code="engine_error").body())
                    break
                for delta in update.deltas:
                    choice = choices.setdefault(delta.choice, _Choice())
                    yield chunk([self._stream_choice(req, chat, choice, delta)])
                if update.usage is not None:
                    if include_usage:
                        yield chunk([], usage_json(update.usage))
                    break
            yield sse("[DONE]")
        finally:
            handle.abort()

    def _stream_choice(self, req, chat: bool, choice: _Choice, delta: Delta) -> dict[str, Any]:
        logprobs = None
        if delta.logprobs is not None:
            if chat:
                logprobs = self.chat_logprobs(delta.token_ids, delta.logprobs, req.top_logprobs or 0)
            else:
                logprobs = self.completion_logprobs(choice, delta.token_ids, delta.logprobs, req.logprobs)
        body: dict[str, Any] = {"index": delta.choice}
        if chat:
            body["delta"] = {"content": delta.text} if delta.text or delta.finish_reason is None else {}
        else:
            body["text"] = delta.text
        return body | {"logprobs": logprobs, "finish_reason": delta.finish_reason}
