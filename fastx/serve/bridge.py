"""One engine loop for many HTTP requests: a thread steps the engine, the asyncio side awaits its updates.

The engine is not thread-safe, so the loop thread is its only user. The HTTP side talks to it in two
directions and never touches the engine:
- commands (add a request, abort one) go into a thread-safe queue that the loop drains between two
  steps, so new requests join the running batch at a step boundary and an abort frees its blocks
  before the next step runs;
- updates (new text, tokens, logprobs, finish reasons) come back through each request's asyncio
  queue, handed over with `loop.call_soon_threadsafe`.
A request is validated (Engine.validate_request) before anything is added, so a malformed one
changes no state; an exception in a step fails the requests in flight and the loop goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastx.engine.engine import Engine
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.sequence import Sequence
from fastx.serve.metrics import ServerMetrics

log = logging.getLogger("fastx.serve")


class QueueFull(Exception):
    """More requests wait than the server accepts (HTTP 503)."""


class EngineFailure(Exception):
    """The engine raised while this request was in flight (HTTP 500); the loop itself goes on."""


@dataclass(slots=True)
class Delta:
    """What one step added to one choice."""

    choice: int  # prompt index * n + sample index, as OpenAI numbers choices
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, float]] | None  # one {token: logprob} per new token, when asked
    finish_reason: str | None  # "stop" or "length" on the choice's last delta


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class Update:
    deltas: list[Delta]
    usage: Usage | None = None  # set on the last update of a request

    @property
    def done(self) -> bool:
        return self.usage is not None


_ACCEPTED = object()


class RequestHandle:
    """The HTTP side's end of one submitted request (one or more prompts, n samples each)."""

    def __init__(self, bridge: EngineLoop, loop: asyncio.AbstractEventLoop):
        self._bridge = bridge
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self.done = False

    def _send(self, item) -> None:  # on the loop thread
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop closed: the server is shutting down, nobody awaits this
            pass

    async def next(self) -> Update:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        self.done = item.done
        return item

    def abort(self) -> None:
        """Stop generating (the client left); idempotent, and harmless once the request is done."""
        if not self.done:
            self.done = True
            self._bridge._post(lambda: self._bridge._abort(self))


@dataclass(slots=True)
class _Sample:
    seq: Sequence
    choice: int
    tokens_sent: int = 0
    text_sent: int = 0
    finish_sent: bool = False
    last_token_at: float | None = None


@dataclass(slots=True)
class _Job:
    request_ids: list[int]
    samples: list[_Sample]
    arrival: float
    hold: int  # characters held back while they could start a stop string
    prompt_tokens: int
    logprobs: bool = False
    first_token_seen: bool = False


class EngineLoop:
    """Owns the engine from `start()` on; see the module docstring for how requests cross threads."""

    def __init__(self, engine: Engine, metrics: ServerMetrics, max_waiting_requests: int = 512):
        if not isinstance(max_waiting_requests, int) or max_waiting_requests < 1:
            raise ValueError(f"max_waiting_requests: expected an integer >= 1, got {max_waiting_requests!r}")
        self.engine = engine
        self.metrics = metrics
        self.max_waiting_requests = max_waiting_requests
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._jobs: dict[RequestHandle, _Job] = {}  # loop thread only
        self._thread = threading.Thread(target=self._run, name="fastx-engine-loop", daemon=True)
        self._claimed = False  # the loop runs on a thread that called claim_current_thread

    # -- the HTTP side ---------------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop on a thread of its own (unless `run_here` owns it: then this is a no-op)."""
        if not self._claimed:
            self._thread.start()

    def claim_current_thread(self) -> None:
        """Make the calling thread the loop's, before the HTTP side starts; it then calls `run_here`.

        fastx serve runs the engine on the main thread and uvicorn on another: torch's CPU GEMMs ran
        single-threaded from a secondary thread (a (1536 x 576) @ (576 x 2) product: ~190 us on the
        main thread, ~300-340 us on any other, as with one thread, on the 2-core EPYC), which cost the
        server ~30% of its tokens/s."""
        self._claimed = True
        self._thread = threading.current_thread()

    def run_here(self) -> None:
        """The loop itself, on the thread that claimed it, until `stop()`."""
        if self._thread is not threading.current_thread():
            raise RuntimeError("run_here: call claim_current_thread() on this thread first")
        self._run()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if not self._claimed and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    async def submit(self, prompts: list[list[int]], params: SamplingParams, arrival: float) -> RequestHandle:
        """Queue the prompts as engine requests; raises QueueFull or ValueError (then nothing was added)."""
        if not self.alive:
            raise EngineFailure("the engine loop is not running")
        handle = RequestHandle(self, asyncio.get_running_loop())
        self._post(lambda: self._add(handle, prompts, params, arrival))
        try:
            first = await handle._queue.get()
        except asyncio.CancelledError:
            handle.abort()  # runs after the add: commands run in order
            raise
        if isinstance(first, BaseException):
            handle.done = True
            raise first
        return handle

    def _post(self, command: Callable[[], None]) -> None:
        self._commands.put(command)
        self._wake.set()

    # -- the loop thread -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            self._drain()
            if self._stopping:
                break
            if not self._jobs:
                self._wake.wait()
                continue
            self._step()
        for handle, job in list(self._jobs.items()):
            self._fail(handle, job, EngineFailure("the server is shutting down"))
        self._drain()

    def _drain(self) -> None:
        ran = False
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
            command()
            ran = True
        if ran:
            self._observe()

    def _add(self, handle: RequestHandle, prompts: list[list[int]], params: SamplingParams, arrival: float) -> None:
        engine = self.engine
        try:
            if self._stopping:
                raise EngineFailure("the server is shutting down")
            waiting = engine.stats().num_requests_waiting
            if waiting + len(prompts) > self.max_waiting_requests:
                raise QueueFull(
                    f"the queue is full: {waiting} requests wait (at most {self.max_waiting_requests}); retry later"
                )
            checked = [engine.validate_request(p, params) for p in prompts]  # all before any is added
            request_ids = [engine.add_request(ids, params) for ids in checked]
        except Exception as exc:  # every failure goes back to its request, never up the loop
            handle._send(exc)
            return
        samples = [
            _Sample(seq, index * params.n + seq.sample_index)
            for index, rid in enumerate(request_ids)
            for seq in engine.get_request(rid).seqs
        ]
        hold = max((len(s) for s in params.stop_strings), default=1) - 1
        prompt_tokens = sum(len(ids) for ids in checked)
        job = _Job(request_ids, samples, arrival, hold, prompt_tokens, params.logprobs is not None)
        self._jobs[handle] = job
        self.metrics.prompt_tokens.inc(prompt_tokens)
        handle._send(_ACCEPTED)

    def _abort(self, handle: RequestHandle) -> None:
        job = self._jobs.pop(handle, None)
        if job is None:
            return
        for rid in job.request_ids:
            self.engine.discard_request(rid)
        self.metrics.requests_finished.labels("abort").inc(len(job.request_ids))

    def _fail(self, handle: RequestHandle, job: _Job, exc: Exception) -> None:
        self._jobs.pop(handle, None)
        for rid in job.request_ids:
            self.engine.discard_request(rid)
        self.metrics.requests_finished.labels("error").inc(len(job.request_ids))
        handle._send(exc)

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception as exc:  # a failed step fails its requests, not the server
            log.exception("engine step failed; failing the %d requests in flight", len(self._jobs))
            self.metrics.step_failures.inc()
            failure = EngineFailure(f"the engine failed: {type(exc).__name__}: {exc}")
            for handle, job in list(self._jobs.items()):
                self._fail(handle, job, failure)
            self._observe()
            return
        now = time.monotonic()
        for handle, job in list(self._jobs.items()):
            try:
                self._publish(handle, job, now)
            except Exception as exc:
                log.exception("publishing a request's update failed")
                self._fail(handle, job, EngineFailure(f"{type(exc).__name__}: {exc}"))
        self._observe()

    def _publish(self, handle: RequestHandle, job: _Job, now: float) -> None:
        deltas = []
        metrics = self.metrics
        for sample in job.samples:
            seq = sample.seq
            start = seq.num_prompt_tokens + sample.tokens_sent
            new_tokens = seq.token_ids[start:]
            hold = 0 if seq.is_finished else job.hold
            safe = max(len(seq.output_text) - hold, sample.text_sent)
            text = seq.output_text[sample.text_sent : safe]
            finish = seq.finish_reason if seq.is_finished and not sample.finish_sent else None
            if not new_tokens and not text and finish is None:
                continue
            if new_tokens:
                if not job.first_token_seen:  # once per request, whatever its n and prompts
                    job.first_token_seen = True
                    metrics.time_to_first_token.observe(now - job.arrival)
                if sample.last_token_at is not None:
                    metrics.inter_token_latency.observe(now - sample.last_token_at)
                sample.last_token_at = now
                metrics.generation_tokens.inc(len(new_tokens))
            logprobs = None
            if job.logprobs:
                logprobs = seq.logprobs[sample.tokens_sent : sample.tokens_sent + len(new_tokens)]
            sample.tokens_sent += len(new_tokens)
            sample.text_sent = safe
            sample.finish_sent = finish is not None
            deltas.append(Delta(sample.choice, text, new_tokens, logprobs, finish))
        usage = None
        if all(s.seq.is_finished for s in job.samples):
            cached = 0
            for rid in job.request_ids:
                request = self.engine.pop_request(rid)
                cached += request.seqs[0].num_cached_tokens if request.seqs else 0
                metrics.requests_finished.labels(request.seqs[0].finish_reason or "stop").inc()
            del self._jobs[handle]
            completion = sum(s.seq.num_output_tokens for s in job.samples)
            usage = Usage(job.prompt_tokens, completion, cached)
        if deltas or usage is not None:
            handle._send(Update(deltas, usage))

    def _observe(self) -> None:
        self.metrics.observe_engine(self.engine.stats())
