"""The generation loop: requests in, one scheduled step at a time, tokens and finished sequences out.

Legend: N = sequences drawing a token this step, V = vocabulary.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from fastx.engine.block_manager import BlockManager
from fastx.engine.config import EngineConfig
from fastx.engine.model_info import eos_token_ids as model_eos_token_ids
from fastx.engine.model_info import max_model_len, token_id_set
from fastx.engine.runner import ModelRunner, kv_bytes_per_block
from fastx.engine.sampler import SampleResult, sample
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.scheduler import Scheduler
from fastx.engine.sequence import Sequence
from fastx.engine.threads import configure_threads
from fastx.processing.detokenizer import IncrementalDetokenizer

__all__ = ["Engine", "EngineConfig", "EngineStats", "Request"]

DEFAULT_CPU_KV_BYTES = 1 << 30  # 1 GiB: ~23k tokens of SmolLM2-135M's fp32 K/V
GPU_MEMORY_FRACTION = 0.85  # of the memory free after loading the model, as vLLM's gpu_memory_utilization


@dataclass
class Request:
    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)  # all n samples, from the start

    @property
    def finished(self) -> bool:
        return all(s.is_finished for s in self.seqs)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot for monitoring (fastx serve's /metrics): what is queued and what the KV cache holds."""

    num_requests_running: int  # requests with a sequence admitted to the running batch
    num_requests_waiting: int  # requests whose sequences all wait (new or preempted)
    num_kv_blocks: int
    num_free_kv_blocks: int  # includes freed blocks whose cached prefix can still be revived
    num_prefix_hit_tokens: int  # prompt tokens served from the prefix cache so far
    num_preemptions: int


def _seed_for(seed: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Engine:
    """Owns the requests; the scheduler owns the queues and the sequences' progress, the runner the KV cache.

    The end-of-sequence ids, the maximum length and the vocabulary come from the model (and the
    tokenizer, when given); `eos_token_ids` replaces the derived ids (transformers' generate argument).
    """

    def __init__(
        self,
        model: Any,
        config: EngineConfig | None = None,
        tokenizer: Any = None,
        eos_token_ids: int | Iterable[int] | None = None,
        runner_factory: Callable[..., ModelRunner] = ModelRunner,
    ):
        """`runner_factory`: builds the runner (ModelRunner's arguments); tensor parallelism passes rank 0's."""
        self.model = model
        self.config = config = config if config is not None else EngineConfig()
        self.tokenizer = tokenizer  # each sequence gets its own incremental detokenizer from it
        if eos_token_ids is None:
            self.eos_token_ids = model_eos_token_ids(model, tokenizer)
        else:
            self.eos_token_ids = token_id_set(eos_token_ids)
        self.max_model_len = max_model_len(model.config)
        self.vocab_size: int = model.config.vocab_size
        num_blocks = config.num_kv_blocks or self._blocks_for_memory(model)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_num_seqs,
            config.max_num_batched_tokens,
            eos_token_ids=self.eos_token_ids,
            max_model_len=self.max_model_len,
        )
        self.runner = runner_factory(
            model,
            num_blocks,
            config.block_size,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            enforce_eager=config.enforce_eager,
        )
        # CPU: one thread per idle core, chosen before the warm-up step runs (fastx.engine.threads)
        self.num_threads = configure_threads(config.num_threads) if model.device.type == "cpu" else None
        self.runner.warm_up()
        # Unseeded requests draw their sampling seed from here: the engine's seed fixes every sample.
        self._seeds = random.Random(config.seed)
        self.requests: dict[int, Request] = {}
        self._request_ids = itertools.count()
        self._arrivals = itertools.count()
        self.num_prefill_tokens = 0  # tokens computed in prefill steps (prefix caching saves these)

    def _blocks_for_memory(self, model) -> int:
        per_block = kv_bytes_per_block(model, self.config.block_size, model.dtype)
        budget = self.config.kv_cache_memory
        if budget is None:
            if model.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(model.device)
                budget = int(free * GPU_MEMORY_FRACTION)
            else:
                budget = DEFAULT_CPU_KV_BYTES
        blocks = budget // per_block
        if blocks < 1:
            raise ValueError(f"kv_cache_memory: {budget} bytes hold no block of {per_block} bytes")
        return int(blocks)

    @property
    def capacity_tokens(self) -> int:
        return self.block_manager.capacity_tokens

    def stats(self) -> EngineStats:
        running = {seq.request_id for seq in self.scheduler.running}
        waiting = {seq.request_id for seq in self.scheduler.waiting} - running
        return EngineStats(
            num_requests_running=len(running),
            num_requests_waiting=len(waiting),
            num_kv_blocks=self.block_manager.num_blocks,
            num_free_kv_blocks=self.block_manager.num_free_blocks,
            num_prefix_hit_tokens=self.block_manager.num_prefix_hits,
            num_preemptions=self.scheduler.num_preemptions,
        )

    def reset_prefix_cache(self) -> int:
        """Forget cached prompt blocks not in use; returns how many were dropped."""
        return self.block_manager.reset_prefix_cache()

    # -- requests --------------------------------------------------------------------------------
    def add_request(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Validate, then queue. Nothing changes when validation fails."""
        ids = self.validate_request(prompt_token_ids, params)
        request = Request(next(self._request_ids), ids, params)
        self.requests[request.request_id] = request
        first, *others = [self._new_sequence(request, index) for index in range(params.n)]
        self.scheduler.add(first, forks=others)  # the others fork from it once the prompt is computed
        return request.request_id

    def validate_request(self, prompt_token_ids, params: SamplingParams) -> list[int]:
        """Raise ValueError for a request the engine could never serve; returns the ids as a list."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling_params: expected SamplingParams, got {type(params).__name__}")
        ids = list(prompt_token_ids)
        if not ids:
            raise ValueError("prompt: expected at least one token, got an empty prompt")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise ValueError("prompt_token_ids: expected a list of integers")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt_token_ids: {bad[:5]} outside the vocabulary [0, {self.vocab_size})")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(ids)} tokens, the model's maximum is {self.max_model_len} (one must be left to generate)"
            )
        if self.block_manager.blocks_needed(len(ids) + 1) > self.block_manager.num_blocks:
            raise ValueError(f"prompt: {len(ids)} tokens do not fit the KV cache ({self.capacity_tokens} tokens)")
        return ids

    def _new_sequence(self, request: Request, index: int) -> Sequence:
        p = request.params
        seed = _seed_for(p.seed, index) if p.seed is not None else self._seeds.getrandbits(63)
        detokenizer = None
        if self.tokenizer is not None:
            detokenizer = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids, p.skip_special_tokens)
        seq = Sequence(request.request_id, index, request.prompt_token_ids, p, next(self._arrivals), seed, detokenizer)
        request.seqs.append(seq)
        return seq

    def get_request(self, request_id: int) -> Request:
        return self.requests[request_id]

    def is_finished(self, request_id: int) -> bool:
        return self.requests[request_id].finished

    def abort(self, request_id: int) -> None:
        request = self.requests.get(request_id)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")

    def has_unfinished(self) -> bool:
        return any(not r.finished for r in self.requests.values())

    def pop_request(self, request_id: int) -> Request:
        """Forget a finished request (its sequences hold no blocks any more)."""
        return self.requests.pop(request_id)

    def discard_request(self, request_id: int) -> None:
        """Abort the request if it is still running, then forget it; unknown ids are ignored."""
        if request_id in self.requests:
            self.abort(request_id)
            self.pop_request(request_id)

    # -- stepping --------------------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Run one step; return the sequences that produced a token or finished."""
        batch = self.scheduler.schedule()
        if batch is None:
            return self.scheduler.finish_oldest_waiting()
        try:
            logits = self.runner.run(batch)
        except BaseException:
            self.scheduler.abort_step(batch)
            raise
        if not batch.is_decode:
            self.num_prefill_tokens += sum(batch.num_tokens)
        draws = batch.draws  # none when every sequence is mid-way through a chunked prompt
        result = sample(logits, draws, self.eos_token_ids) if draws else SampleResult([], [])
        return self.scheduler.postprocess(batch, result.token_ids, result.logprobs)
