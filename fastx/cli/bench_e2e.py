"""The end-to-end workloads of `fastx bench e2e`: fastx against transformers in one process (CPU or CUDA).

- all-MiniLM-L6-v2 sentence embeddings, batches of 32 (sentences/s);
- SmolLM2-135M batch generation, EOS ignored so both sides make the same tokens (tokens/s).
Each side is timed as the best of a few rounds after a warm-up; the ratio is fastx / peer.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any


def _quiet_transformers():
    """transformers, with its progress bars off: its "Loading weights" bar would break into the table."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers


def _sentences(n: int) -> list[str]:
    rng = random.Random(0)
    words = (
        "the quick brown fox jumps over a lazy dog while transformer models encode sentences into "
        "dense vectors for semantic search and clustering of documents"
    ).split()
    lengths = [3, 5, 8, 12, 20, 40, 80, 120]  # words; a long tail as in real corpora
    return [" ".join(rng.choice(words) for _ in range(rng.choice(lengths))) for _ in range(n)]


def _best_time(fn: Callable[[], Any], rounds: int, sync: Callable[[], None]) -> float:
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def e2e_embeddings(model_path: str, device: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """all-MiniLM-L6-v2 forward passes over batches of 32 tokenized sentences: sentences/s."""
    import torch

    from fastx import AutoModel, AutoTokenizer

    sentences = _sentences(32 if quick else 256)
    rounds = 1 if quick else 3
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    batches = [
        tokenizer(sentences[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt").to(device)
        for i in range(0, len(sentences), 32)
    ]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ours = AutoModel.from_pretrained(model_path, device=device)

    @torch.inference_mode()
    def run_fastx():
        for enc in batches:
            ours(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))

    run_fastx()  # warm-up (Triton compiles on first launch)
    result: dict[str, Any] = {
        "workload": "all-MiniLM-L6-v2 embeddings",
        "unit": "sentences/s",
        "sentences": len(sentences),
        "batch": 32,
        "device": device,
    }
    result["fastx"] = len(sentences) / _best_time(run_fastx, rounds, sync)
    result["peer"] = None
    if not _have("transformers"):
        log("embeddings: transformers is not installed; fastx alone is timed (pip install transformers to compare)")
    else:
        transformers = _quiet_transformers()
        theirs = transformers.AutoModel.from_pretrained(model_path).to(device).eval()

        @torch.inference_mode()
        def run_transformers():
            for enc in batches:
                theirs(**enc)

        run_transformers()
        result["peer"] = len(sentences) / _best_time(run_transformers, rounds, sync)
        result["peer_name"] = f"transformers {transformers.__version__}"
    return result


def e2e_generation(model_path: str, device: str, quick: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """SmolLM2 batch generation: N prompts x M new tokens (EOS ignored so every run makes the same tokens)."""
    import torch

    from fastx import LLM, AutoTokenizer, SamplingParams

    n_prompts, new_tokens = (2, 4) if quick else (32, 64)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    prompts = [f"Write a short story about {s}." for s in _sentences(n_prompts)]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    llm = LLM(model_path, dtype=dtype, device=device, tokenizer=tokenizer)
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)  # warm-up
    made = []

    def run_fastx():
        outs = llm.generate(prompts, params, use_tqdm=False)
        made.append(sum(len(o.outputs[0].token_ids) for o in outs))

    seconds = _best_time(run_fastx, 1 if quick else 2, sync)
    result: dict[str, Any] = {
        "workload": "SmolLM2-135M batch generation",
        "unit": "tokens/s",
        "prompts": n_prompts,
        "new_tokens": new_tokens,
        "device": device,
        "fastx": made[-1] / seconds,
        "peer": None,
    }
    if not _have("transformers") or not _have("gguf"):
        log("generation: transformers (and gguf) not installed; fastx alone is timed")
        return result
    if quick:  # transformers de-quantizes the whole GGUF on load: tens of seconds on a CPU
        log("generation: --quick times fastx alone (the transformers peer runs without --quick)")
        return result
    transformers = _quiet_transformers()
    folder, name = os.path.split(model_path)
    kwargs = {"gguf_file": name} if name.lower().endswith(".gguf") else {}
    source = folder if kwargs else model_path
    tok = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    theirs = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).to(device).eval()
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)

    @torch.inference_mode()
    def run_transformers():
        theirs.generate(
            **enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )

    result["peer"] = n_prompts * new_tokens / _best_time(run_transformers, 1 if quick else 2, sync)
    result["peer_name"] = f"transformers {transformers.__version__}"
    return result
