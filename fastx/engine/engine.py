"""The generation loop: requests in, one scheduled step at a time, tokens and finished sequences out.

Legend: N = sequences sampling this step, V = vocabulary.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import torch

from fastx.engine.block_manager import BlockManager
from fastx.engine.runner import ModelRunner, kv_bytes_per_block
from fastx.engine.sampler import sample
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.scheduler import Scheduler
from fastx.engine.sequence import Sequence, SequenceStatus

DEFAULT_CPU_KV_BYTES = 1 << 30  # 1 GiB: ~23k tokens of SmolLM2-135M's fp32 K/V
GPU_MEMORY_FRACTION = 0.85  # of the memory free after loading the model, as vLLM's gpu_memory_utilization


@dataclass(slots=True)
class EngineConfig:
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None  # bytes; ignored when num_kv_blocks is given
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    seed: int = 0

    def __post_init__(self):
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if self.num_kv_blocks is not None and (not isinstance(self.num_kv_blocks, int) or self.num_kv_blocks < 1):
            raise ValueError(f"num_kv_blocks: expected a positive integer or None, got {self.num_kv_blocks!r}")
        if self.kv_cache_memory is not None and (not isinstance(self.kv_cache_memory, int) or self.kv_cache_memory < 1):
            raise ValueError(f"kv_cache_memory: expected a positive number of bytes or None, got {self.kv_cache_memory!r}")


@dataclass
class Request:
    request_id: int
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs)


def _seed_for(seed: int, sample_index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Engine:
    def __init__(self, model, config: EngineConfig, eos_token_ids: set[int], max_model_len: int, vocab_size: int,
                 detokenizer_factory=None):  # fmt: skip
        self.model = model
        self.config = config
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.detokenizer_factory = detokenizer_factory  # (prompt_ids, params) -> object with .add(token) -> str
        num_blocks = config.num_kv_blocks or self._blocks_for_memory(model)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(model, num_blocks, config.block_size)
        self.generator = torch.Generator(device=model.device).manual_seed(config.seed)
        self.requests: dict[int, Request] = {}
        self._request_ids = itertools.count()
        self._arrivals = itertools.count()
        self._detokenizers: dict[int, object] = {}
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

    # -- requests --------------------------------------------------------------------------------
    def add_request(self, prompt_token_ids: list[int], params: SamplingParams) -> int:
        """Validate, then queue. Nothing changes when validation fails."""
        ids = self.validate_request(prompt_token_ids, params)
        request = Request(next(self._request_ids), ids, params)
        self.requests[request.request_id] = request
        self.scheduler.add(self._new_sequence(request, 0, ids))
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
            raise ValueError(f"prompt: {len(ids)} tokens, the model's maximum is {self.max_model_len} (one must be left to generate)")
        if self.block_manager.blocks_needed(len(ids) + 1) > self.block_manager.num_blocks:
            raise ValueError(f"prompt: {len(ids)} tokens do not fit the KV cache ({self.capacity_tokens} tokens)")
        return ids

    def _new_sequence(self, request: Request, index: int, tokens: list[int]) -> Sequence:
        p = request.params
        generator = None
        if p.seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(_seed_for(p.seed, index))
        seq = Sequence(request.request_id, index, tokens, p, next(self._arrivals), generator)
        request.seqs.append(seq)
        if self.detokenizer_factory is not None:
            self._detokenizers[seq.seq_id] = self.detokenizer_factory(request.prompt_token_ids, p)
        return seq

    def abort(self, request_id: int) -> None:
        request = self.requests.get(request_id)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq, "abort")
        while len(request.seqs) < request.params.n:
            orphan = self._new_sequence(request, len(request.seqs), request.prompt_token_ids)
            orphan.status, orphan.finish_reason = SequenceStatus.FINISHED, "abort"

    def has_unfinished(self) -> bool:
        return any(not r.finished for r in self.requests.values())

    def pop_request(self, request_id: int) -> Request:
        """Forget a finished request (its sequences hold no blocks any more)."""
        return self.requests.pop(request_id)

    # -- stepping --------------------------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """Run one step; return the sequences that produced a token or finished."""
        batch = self.scheduler.schedule()
        if batch is None:
            return self._unblock()
        if not batch.is_decode:
            self.num_prefill_tokens += sum(batch.num_tokens)
        try:
            sampling, logits = self.runner.run(batch)
        except BaseException:
            # The step's K/V may be partly written: unpublish the blocks it published and
            # recompute its sequences from scratch, so no later step reads what was never written.
            self.block_manager.withdraw_step()
            self.scheduler.requeue(batch.seqs)
            raise
        changed = []
        if sampling:
            result = sample(logits, sampling, self.eos_token_ids, self.generator)
            for row, seq in enumerate(sampling):
                changed += self._append(seq, result.token_ids[row], result.logprobs[row], logits[row])
        return changed

    def _unblock(self) -> list[Sequence]:
        """Nothing can run: the oldest waiting sequence has outgrown the whole cache; end it."""
        if not self.scheduler.waiting:
            return []
        seq = self.scheduler.waiting[0]
        self.scheduler.finish(seq, "length")
        return [seq]

    def _append(self, seq: Sequence, token: int, logprobs, logits_row) -> list[Sequence]:
        request = self.requests[seq.request_id]
        changed = [seq]
        first_token = seq.num_output_tokens == 0
        self._accept(seq, token, logprobs)
        if first_token and seq.sample_index == 0 and len(request.seqs) < request.params.n:
            changed += self._fork_samples(request, seq, logits_row)
        return changed

    def _fork_samples(self, request: Request, parent: Sequence, logits_row) -> list[Sequence]:
        """The other n - 1 samples share the prompt's blocks and draw their first token from the same logits."""
        children = []
        position = self.scheduler.running.index(parent) + 1 if parent in self.scheduler.running else len(self.scheduler.running)
        for index in range(len(request.seqs), request.params.n):
            child = self._new_sequence(request, index, request.prompt_token_ids)
            if parent.is_finished:  # the parent already released its blocks: prefill anew
                self.scheduler.add(child)
                continue
            child.token_ids = parent.token_ids[: parent.num_prompt_tokens]
            self.block_manager.fork(parent, child)
            child.num_computed_tokens = parent.num_prompt_tokens
            child.status = SequenceStatus.RUNNING
            self.scheduler.running.insert(position, child)
            position += 1
            result = sample(logits_row[None], [child], self.eos_token_ids, self.generator)
            self._accept(child, result.token_ids[0], result.logprobs[0])
            children.append(child)
        return children

    def _accept(self, seq: Sequence, token: int, logprobs) -> None:
        seq.token_ids.append(token)
        if logprobs is not None:
            seq.logprobs.append(logprobs)
        detok = self._detokenizers.get(seq.seq_id)
        if detok is not None:
            seq.output_text += detok.add(token)
        p = seq.params
        reason = None
        if token in p.stop_token_ids:
            reason, seq.stop_reason = "stop", token
        elif not p.ignore_eos and token in self.eos_token_ids:
            reason = "stop"
        elif p.stop_strings and seq.num_output_tokens >= p.min_tokens:
            for stop in p.stop_strings:
                at = seq.output_text.find(stop)
                if at >= 0:
                    seq.output_text = seq.output_text[: at + (len(stop) if p.include_stop_str_in_output else 0)]
                    reason, seq.stop_reason = "stop", stop
                    break
        if reason is None and ((p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens)
                               or len(seq) >= self.max_model_len):  # fmt: skip
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason)
            detok = self._detokenizers.pop(seq.seq_id, None)
            if detok is not None and not isinstance(seq.stop_reason, str):
                seq.output_text += detok.flush()  # text held back for an unfinished character
