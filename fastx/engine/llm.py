"""`LLM`: vLLM's offline API (generate, chat, plus streaming) on fastx's paged engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fastx.engine.engine import Engine, EngineConfig
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

        A `.gguf` model keeps its block-quantized weights as blocks unless `dtype` names a float dtype
        to dequantize them to (fastx.ops.quant_linear). `quantization="int8"` (CPU): every projection
        through torch's dynamic int8 GEMM (fastx.ops.int8_linear), approximate."""
        from fastx.checkpoints.gguf import read_gguf, resolve_gguf_file
        from fastx.models import AutoModelForCausalLM
        from fastx.ops.linear import pack_linear_weights
        from fastx.processing.gguf_tokenizer import load_gguf_tokenizer

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
        gguf = None
        if isinstance(model, torch.nn.Module):
            if quantization is not None:
                raise ValueError(
                    "quantization: applies to a model LLM loads itself; quantize a module with "
                    "fastx.ops.int8_linear.quantize_int8"
                )
            self.model = model
            source = getattr(model, "name_or_path", None)
        else:
            source = model
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
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
        self.engine = Engine(self.model, engine_config, tokenizer=self.tokenizer)

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
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [
            {
                "prompt_token_ids": self.tokenizer.apply_chat_template(
                    c, tokenize=True, add_generation_prompt=add_generation_prompt, chat_template=chat_template
                )
            }
            for c in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(self, prompt, sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text deltas as tokens are produced; closing the generator aborts the request.

        Text that could be the start of a stop string is held back until it is known not to be.
        """
        ((text, ids, params),) = self._normalise(prompt, sampling_params)
        if params.n != 1:
            raise ValueError(f"SamplingParams.n: stream supports n=1, got {params.n}")
        ((request_id, _, _),) = self._add([(text, ids, params)])
        hold = max((len(s) for s in params.stop_strings), default=1) - 1
        emitted = 0
        try:
            while True:
                request = self.engine.get_request(request_id)
                seq = request.seqs[0]
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
