"""`text-generation`: continuations of prompts or chat conversations, on fastx's paged engine.

transformers' TextGenerationPipeline calls `model.generate` once per batch of padded prompts;
here every prompt of a batch becomes a request of one `LLM` (continuous batching over a paged KV
cache: no compute on padding, finished answers leave the batch). Its parameters and outputs are
transformers': `max_new_tokens`, `do_sample`, `temperature`, `top_p`, `top_k`,
`repetition_penalty`, `num_return_sequences`, `return_full_text`, `return_tensors`,
`stop_sequence`; a chat (a list of {"role", "content"}) returns the conversation with the
assistant's answer appended. Unset parameters come, as in transformers, from the checkpoint's
generation_config.json, then from the pipeline's defaults (256 new tokens, sampling at 0.7).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastx.checkpoints.hub import read_json
from fastx.pipelines.base import Params, Pipeline, is_stream

PIPELINE_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
GENERATE_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
GENERATION_KEYS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
SAMPLING_KEYS = ("temperature", "top_p", "top_k")


class Chat:
    """One conversation as an input item (a list of messages would otherwise read as a batch)."""

    def __init__(self, messages: list[dict]):
        if not all(is_message(m) for m in messages):
            raise ValueError("inputs: a chat is a list of {'role': ..., 'content': ...} dicts")
        self.messages = list(messages)


def is_message(item: Any) -> bool:
    return isinstance(item, dict) and "role" in item and "content" in item


def _as_chats(inputs):
    """transformers' reading: a list of messages is one chat; a list (or stream) of such lists, several."""
    if isinstance(inputs, (list, tuple)) and inputs:
        if is_message(inputs[0]):
            return Chat(list(inputs))
        if all(isinstance(c, (list, tuple)) and c and is_message(c[0]) for c in inputs):
            return [Chat(list(c)) for c in inputs]
        return inputs
    if is_stream(inputs):
        return (Chat(list(c)) if isinstance(c, (list, tuple)) and c and is_message(c[0]) else c for c in inputs)
    return inputs


class TextGenerationPipeline(Pipeline):
    task = "text-generation"

    def __init__(self, model, tokenizer, engine_kwargs: dict | None = None, **kwargs):
        from fastx.engine.llm import LLM

        if tokenizer is None:
            raise ValueError("tokenizer: the text-generation pipeline needs a tokenizer, got None")
        self.llm = LLM(model, tokenizer=tokenizer, **(engine_kwargs or {}))
        self.model_generation_config = _generation_config(model)
        super().__init__(model, tokenizer, **kwargs)

    def _sanitize_parameters(
        self,
        return_full_text=None,
        return_tensors=None,
        return_text=None,
        clean_up_tokenization_spaces=None,
        skip_special_tokens=None,
        continue_final_message=None,
        stop_sequence=None,
        num_return_sequences=None,
        **generate_kwargs,
    ) -> Params:
        unknown = sorted(set(generate_kwargs) - set(GENERATION_KEYS))
        if unknown:
            raise ValueError(f"{self.task}: unexpected argument(s) {unknown}")
        forward = dict(generate_kwargs)
        if num_return_sequences is not None:
            forward["n"] = num_return_sequences
        if stop_sequence is not None:
            forward["stop"] = [stop_sequence] if isinstance(stop_sequence, str) else list(stop_sequence)
        post: dict[str, Any] = {}
        if return_full_text is not None:
            if return_text is not None or return_tensors is not None:
                raise ValueError(f"{self.task}: return_full_text excludes return_text and return_tensors")
            post["return_type"] = "full_text" if return_full_text else "new_text"
        elif return_tensors:
            if return_text is not None:
                raise ValueError(f"{self.task}: return_text excludes return_tensors")
            post["return_type"] = "tensors"
        for key, value in (
            ("clean_up_tokenization_spaces", clean_up_tokenization_spaces),
            ("skip_special_tokens", skip_special_tokens),
            ("continue_final_message", continue_final_message),
        ):
            if value is not None:
                post[key] = value
        pre = {} if continue_final_message is None else {"continue_final_message": continue_final_message}
        return pre, forward, post

    def __call__(self, inputs, batch_size=None, **kwargs):
        # A batch's prompts run together on the engine: without a batch_size, up to 32 at once.
        return super().__call__(_as_chats(inputs), batch_size or self.batch_size or 32, **kwargs)

    def preprocess(self, item, continue_final_message=None) -> list[dict[str, Any]]:
        if isinstance(item, Chat):
            if continue_final_message is None:
                continue_final_message = item.messages[-1]["role"] == "assistant"
            text = self.tokenizer.apply_chat_template(
                item.messages, tokenize=False, add_generation_prompt=not continue_final_message
            )
            if continue_final_message:  # end the prompt right after the last message, as transformers does
                final = item.messages[-1]["content"].strip()
                text = text[: text.rindex(final) + len(final)]
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        elif isinstance(item, str):
            ids = self.tokenizer(item)["input_ids"]
        else:
            raise ValueError(
                f"{self.task}: inputs: expected a string, a chat (list of messages) or a list of them, "
                f"got {type(item).__name__}"
            )
        return [{"prompt": item, "prompt_ids": ids}]

    def sampling_params(self, prompt_length: int, **generate):
        from fastx.engine.sampling_params import SamplingParams

        set_params = {**self.model_generation_config, **generate}
        params = {**GENERATE_DEFAULTS, **{k: v for k, v in PIPELINE_DEFAULTS.items() if k not in set_params}}
        if "max_length" in set_params and "max_new_tokens" not in set_params:
            params.pop("max_new_tokens")
        if not set_params.get("do_sample", params["do_sample"]):  # pipeline sampling defaults apply when sampling
            params.update({k: GENERATE_DEFAULTS[k] for k in SAMPLING_KEYS})
        params.update(set_params)
        if params.get("max_new_tokens") is not None:
            max_tokens = params["max_new_tokens"]
        else:
            max_tokens = params["max_length"] - prompt_length
            if max_tokens < 1:
                raise ValueError(f"{self.task}: max_length {params['max_length']} leaves no room after the prompt")
        return SamplingParams(
            n=params.get("n", 1),
            temperature=params["temperature"] if params["do_sample"] else 0.0,
            top_p=params["top_p"],
            top_k=params["top_k"] or -1,
            repetition_penalty=params["repetition_penalty"],
            max_tokens=max_tokens,
            stop=params.get("stop"),
            skip_special_tokens=True,
        )

    def forward(self, features, **generate) -> list[Any]:
        prompts = [{"prompt_token_ids": f["prompt_ids"]} for f in features]
        params = [self.sampling_params(len(f["prompt_ids"]), **generate) for f in features]
        return [[c.token_ids for c in out.outputs] for out in self.llm.generate(prompts, params, use_tqdm=False)]

    def postprocess(
        self,
        features,
        outputs,
        return_type: str = "full_text",
        clean_up_tokenization_spaces=None,
        skip_special_tokens: bool = True,
        continue_final_message=None,
    ):
        prompt, prompt_ids = features[0]["prompt"], features[0]["prompt_ids"]
        records = []
        for tokens in outputs[0]:
            if return_type == "tensors":
                records.append({"generated_token_ids": [*prompt_ids, *tokens]})
                continue
            text = self.tokenizer.decode(tokens, skip_special_tokens, clean_up_tokenization_spaces)
            if return_type == "full_text":
                text = _full_text(prompt, text, continue_final_message)
            records.append({"generated_text": text})
        return records


def _full_text(prompt, text: str, continue_final_message):
    if isinstance(prompt, str):
        return prompt + text
    messages = prompt.messages
    if continue_final_message is None:
        continue_final_message = messages[-1]["role"] == "assistant"
    if continue_final_message:
        return [*messages[:-1], {"role": messages[-1]["role"], "content": messages[-1]["content"] + text}]
    return [*messages, {"role": "assistant", "content": text}]


def _generation_config(model) -> dict[str, Any]:
    """The generation parameters the checkpoint's generation_config.json sets (transformers reads them first)."""
    folder = getattr(model, "name_or_path", None)
    if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
        return {}
    data = read_json(Path(folder) / "generation_config.json", missing_ok=True)
    return {k: data[k] for k in GENERATION_KEYS if data.get(k) is not None}
