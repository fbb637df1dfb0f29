"""`LLM`: vLLM's offline API (generate, chat, plus streaming) on fastx's paged engine."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fastx.distributed.layers import building
from fastx.engine.config import check_positive_int
from fastx.engine.engine import Engine, EngineConfig
from fastx.engine.runner import ModelRunner
from fastx.engine.sampling_params import SamplingParams
from fastx.engine.sequence import Sequence


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, float]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    num_cached_tokens: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def _completion(seq: Sequence) -> CompletionOutput:
    logprobs = seq.logprobs if seq.params.logprobs is not None else None
    cumulative = None
    if logprobs is not None:
        chosen = seq.output_token_ids
        cumulative = float(sum(step[token] for step, token in zip(logprobs, chosen)))
    return CompletionOutput(
        seq.sample_index,
        seq.output_text,
        list(seq.output_token_ids),
        cumulative,
        logprobs,
        seq.finish_reason,
        seq.stop_reason,
    )


def _start_tensor_parallel(model, size, dtype, device, revision, pack_weights):
    """Check the size against the checkpoint's heads, then start (or, under torchrun, join) the ranks."""
    if isinstance(model, torch.nn.Module):
        raise ValueError(
            "model: tensor_parallel_size > 1 needs a checkpoint (Hub id, folder or .gguf) that each rank loads its "
            f"shard from, got a loaded {type(model).__name__}"
        )
    from fastx.distributed.launch import TensorParallel
    from fastx.models import AutoConfig

    config = AutoConfig.from_pretrained(model, revision=revision)
    return TensorParallel.start(config, size, model, dtype, device, revision, pack_weights)


class LLM:
    """Offline generation with continuous batching on a paged KV cache (vLLM's `LLM`)."""

    def __init__(
        self,
        model: str | os.PathLike | torch.nn.Module,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        block_size: int = 16,
        num_kv_blocks: int | None = None,
        kv_cache_memory: int | None = None,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        tokenizer: str | os.PathLike | Any | None = None,
        skip_tokenizer_init: bool = False,
        revision: str | None = None,
        pack_weights: bool = False,
        enforce_eager: bool = False,
        tensor_parallel_size: int = 1,
        num_threads: int | None = None,
        quantization: str | None = None,
    ):
        """`pack_weights`: float32 CPU models only; adds a oneDNN-packed copy of every projection
        weight, so batches of 3 or more sequences and prefills run ~1.6x faster, for twice the
        projection weights' memory (fastx.ops.pack_linear_weights).

        `enforce_eager` (vLLM's): on CUDA, run decode steps eagerly instead of replaying the CUDA
        graphs captured per batch bucket when the engine starts.

        `num_threads`: on the CPU, torch's intra-op threads; None = one per core that other processes
        leave idle when the engine starts (fastx.engine.threads), so a busy core does not stall decoding.

        A `.gguf` model: `dtype="auto"` keeps its block-quantized weights as blocks (fastx.ops.quant_linear),
        a float `dtype` dequantizes them to it, and None keeps them where that pays: on CUDA, and on a CPU
        when the fp32 weights would not fit in memory (fastx.models.gguf_blocks.keeps_blocks_by_default).
        `quantization="int8"` / `"int4"` (CPU): the projections through torch's int8 / int4 weight-only
        GEMMs (fastx.models.quantization), approximate; the fastest CPU decode.

        `tensor_parallel_size` N > 1 (vLLM's): the model is split across N processes of this machine
        (one GPU or one share of the CPU cores each; workers started here), or across the processes
        torchrun started; rank 0 (this process) schedules and samples (fastx.distributed). Call
        `close()` (or use `with LLM(...)`) to stop the workers; they also stop at exit."""
        # Validated before the model loads: a bad knob fails in milliseconds, not after the weights.
        engine_config = EngineConfig(
            block_size=block_size,
            num_kv_blocks=num_kv_blocks,
            kv_cache_memory=kv_cache_memory,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=enable_prefix_caching,
            seed=seed,
            enforce_eager=enforce_eager,
            num_threads=num_threads,
        )
        self.tensor_parallel = None
        sharded = contextlib.nullcontext()
        check_positive_int("tensor_parallel_size", tensor_parallel_size)
        if tensor_parallel_size > 1 and quantization is not None:
            raise ValueError(f"quantization={quantization!r}: not available with tensor_parallel_size > 1")
        if tensor_parallel_size > 1:
            self.tensor_parallel = _start_tensor_parallel(
                model, tensor_parallel_size, dtype, device, revision, pack_weights
            )
            device = self.tensor_parallel.device
            sharded = building(self.tensor_parallel.shard)
        try:
            with sharded:
                loading = {"dtype": dtype, "device": device, "revision": revision, "quantization": quantization}
                self._load(model, loading, tokenizer, skip_tokenizer_init, pack_weights, engine_config)
        except BaseException:
            self.close()
            raise

    def _load(self, model, loading: dict, tokenizer, skip_tokenizer_init, pack_weights, engine_config):
        from fastx.checkpoints.gguf import read_gguf, resolve_gguf_file
        from fastx.models import AutoModelForCausalLM
        from fastx.ops.linear import pack_linear_weights
        from fastx.processing.gguf_tokenizer import load_gguf_tokenizer

        dtype, device, revision, quantization = (loading[k] for k in ("dtype", "device", "revision", "quantization"))
        gguf = None
        if isinstance(model, torch.nn.Module):
            if quantization is not None:
                raise ValueError(
                    "quantization: applies to a model LLM loads itself; quantize a module with "
                    "fastx.ops.int8_linear.quantize_int8 or fastx.ops.int4_linear.quantize_int4"
                )
            self.model = model
            source = getattr(model, "name_or_path", None)
        else:
            source = model
            if device is None:
                device = "auto"  # cuda when present, else cpu (checked with the model's own placement)
            gguf_path = resolve_gguf_file(model)
            if gguf_path is not None:  # parsed once: the model and its tokenizer come from the same header
                gguf = read_gguf(gguf_path)
                self.model = AutoModelForCausalLM.from_gguf(gguf, dtype=dtype, device=device, quantization=quantization)
                self.model.name_or_path = str(model)
            else:
                self.model = AutoModelForCausalLM.from_pretrained(
                    model, dtype=dtype, device=device, revision=revision, quantization=quantization
                )
        if pack_weights:
            pack_linear_weights(self.model)
        if skip_tokenizer_init:
            self.tokenizer = None
        elif tokenizer is None and gguf is not None:
            self.tokenizer = load_gguf_tokenizer(gguf, name_or_path=str(model))
        else:
            self.tokenizer = self._load_tokenizer(tokenizer or source, revision)
        runner = self.tensor_parallel.runner_factory() if self.tensor_parallel is not None else ModelRunner
        self.engine = Engine(self.model, engine_config, tokenizer=self.tokenizer, runner_factory=runner)

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the tensor-parallel workers and leave their process group (nothing to do on one device)."""
        if self.tensor_parallel is not None:
            self.tensor_parallel.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- setup -----------------------------------------------------------------------------------
    @staticmethod
    def _load_tokenizer(source, revision):
        if source is None:
            return None
        if not isinstance(source, (str, os.PathLike)):
            return source  # a tokenizer object
        from fastx.checkpoints.hub import resolve_checkpoint
        from fastx.processing import AutoTokenizer

        if str(source).endswith(".gguf"):
            return AutoTokenizer.from_pretrained(source)  # vocabulary, merges and chat template live in the GGUF
        folder = resolve_checkpoint(source, revision=revision)
        if not (folder / "tokenizer.json").exists() and not (folder / "vocab.txt").exists():
            return None  # served from token ids only, as vLLM's skip_tokenizer_init
        return AutoTokenizer.from_pretrained(folder)

    def get_tokenizer(self):
        return self.tokenizer

    # -- prompts ---------------------------------------------------------------------------------
    def _prompt_ids(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            prompt = prompt.get("prompt")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompts: a text prompt needs a tokenizer; this model has none, pass token ids")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise ValueError(f"prompts: expected a string, a list of token ids or a dict, got {type(prompt).__name__}")

    def _normalise(self, prompts, sampling_params) -> list[tuple[str | None, list[int], SamplingParams]]:
        single = isinstance(prompts, (str, dict)) or (
            isinstance(prompts, (list, tuple)) and prompts and all(isinstance(t, int) for t in prompts)
        )
        prompt_list = [prompts] if single else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(prompt_list)
        else:
            params = list(sampling_params)
            if len(params) != len(prompt_list):
                raise ValueError(f"sampling_params: expected one per prompt ({len(prompt_list)}), got {len(params)}")
        return [(*self._prompt_ids(p), sp) for p, sp in zip(prompt_list, params)]

    def _add(self, items) -> list[tuple[int, str | None, list[int]]]:
        """Validate every prompt first, so a bad one leaves the engine untouched."""
        for _, ids, params in items:
            self.engine.validate_request(ids, params)
        return [(self.engine.add_request(ids, params), text, ids) for text, ids, params in items]

    def _output(self, request_id: int, text: str | None, ids: list[int], pop: bool = True) -> RequestOutput:
        request = self.engine.pop_request(request_id) if pop else self.engine.get_request(request_id)
        outputs = [_completion(s) for s in sorted(request.seqs, key=lambda s: s.sample_index)]
        cached = request.seqs[0].num_cached_tokens if request.seqs else 0
        return RequestOutput(str(request_id), text, ids, outputs, request.finished, cached)

    # -- the API -----------------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for every prompt with continuous batching; outputs in prompt order."""
        added = self._add(self._normalise(prompts, sampling_params))
        progress = None
        if use_tqdm:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(added), desc="Processed prompts", dynamic_ncols=True)
        try:
            pending = {rid for rid, _, _ in added}
            while pending:
                self.engine.step()
                done = {rid for rid in pending if self.engine.is_finished(rid)}
                pending -= done
                if progress is not None and done:
                    progress.update(len(done))
        except BaseException:
            for rid, _, _ in added:
                self.engine.discard_request(rid)
            raise
        finally:
            if progress is not None:
                progress.close()
        return [self._output(rid, text, ids) for rid, text, ids in added]

    def reset_prefix_cache(self) -> bool:
        """Forget cached prompt blocks not in use (vLLM's LLM.reset_prefix_cache); e.g. between benchmark rounds."""
        self.engine.reset_prefix_cache()
        return True

    def chat(
        self,
        messages,
        sampling_params=None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"}) or a list of them, through the chat template."""
        if self.tokenizer is None:
            raise ValueError("chat: needs a tokenizer with a chat template; this model has no tokenizer")
        if isinstance(messages, str) or not messages:
            raise ValueError(
                "messages: expected a conversation, a list of {'role': ..., 'content': ...} dicts (or a list of "
                f"conversations), got {messages!r}; for one user turn: [{{'role': 'user', 'content': {messages!r}}}]"
            )
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        for c in conversations:
            if isinstance(c, str) or not all(isinstance(m, dict) for m in c):
                raise ValueError(f"messages: expected each conversation to be a list of dicts, got {c!r}")
        prompts = [
            {
                "prompt_token_ids": self.tokenizer.apply_chat_template(
                    c, tokenize=True, add_generation_prompt=add_generation_prompt, chat_template=chat_template
                )
            }
            for c in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(
        self, prompt, sampling_params: SamplingParams | None = None, metrics: dict[str, Any] | None = None
    ) -> Iterator[str]:
        """Yield text deltas as tokens are produced; closing the generator aborts the request.

        Text that could be the start of a stop string is held back until it is known not to be.
        `metrics`, when given, is filled as generate_as_completed fills RequestOutput.metrics.
        """
        ((text, ids, params),) = self._normalise(prompt, sampling_params)
        if params.n != 1:
            raise ValueError(f"SamplingParams.n: stream supports n=1, got {params.n}")
        ((request_id, _, _),) = self._add([(text, ids, params)])
        hold = max((len(s) for s in params.stop_strings), default=1) - 1
        emitted = 0
        metrics = {} if metrics is None else metrics
        metrics.update(arrival_time=time.perf_counter(), num_prompt_tokens=len(ids))
        try:
            while True:
                request = self.engine.get_request(request_id)
                seq = request.seqs[0]
                _record_progress(metrics, request)
                if request.finished:
                    if len(seq.output_text) > emitted:
                        yield seq.output_text[emitted:]
                    return
                self.engine.step()
                safe = len(seq.output_text) - (0 if seq.is_finished else hold)
                if safe > emitted:
                    yield seq.output_text[emitted:safe]
                    emitted = safe
        finally:
            self.engine.discard_request(request_id)

    def generate_as_completed(self, prompts, sampling_params=None) -> Iterator[tuple[int, RequestOutput]]:
        """Like generate, one continuous batch, but yield (prompt index, output) as each request finishes,
        so a caller can write finished answers before the slowest one ends; closing the generator aborts
        the rest. Each output's `metrics` holds time.perf_counter() stamps `arrival_time`,
        `first_token_time` and `finished_time`, and `num_prompt_tokens`, `num_output_tokens`."""
        added = self._add(self._normalise(prompts, sampling_params))
        start = time.perf_counter()
        metrics = {rid: {"arrival_time": start, "num_prompt_tokens": len(ids)} for rid, _, ids in added}
        pending = dict(enumerate(added))
        try:
            while pending:
                self.engine.step()
                for index, (rid, text, ids) in list(pending.items()):
                    if _record_progress(metrics[rid], self.engine.get_request(rid)):
                        del pending[index]
                        output = self._output(rid, text, ids)
                        output.metrics = metrics[rid]
                        yield index, output
        finally:
            for rid, _, _ in pending.values():
                self.engine.discard_request(rid)


def _record_progress(metrics: dict[str, Any], request) -> bool:
    """Stamp the first token and the end of `request` into `metrics`; True once it has finished."""
    now = time.perf_counter()
    metrics["num_output_tokens"] = sum(s.num_output_tokens for s in request.seqs)
    if metrics["num_output_tokens"] and "first_token_time" not in metrics:
        metrics["first_token_time"] = now
    if request.finished and "finished_time" not in metrics:
        metrics["finished_time"] = now
    return request.finished
