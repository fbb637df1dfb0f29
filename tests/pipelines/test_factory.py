"""fastx.pipeline(): task names and aliases, defaults (embedded and Hub-cached), model and task errors."""

import shutil

import pytest

import fastx
from fastx.pipelines.factory import TASKS, _default_model
from tests.pipelines.conftest import CORPUS, SENTIMENT_LABELS, assert_same, transformers


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty (or test-filled) Hugging Face cache with downloads switched off."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_pipeline_is_exported_lazily():
    assert "pipeline" in fastx.__all__
    from fastx.pipelines import pipeline

    assert fastx.pipeline is pipeline


def test_aliases_build_their_tasks_pipeline(make_checkpoint):
    seq = make_checkpoint("bert", "seq", SENTIMENT_LABELS)
    assert type(fastx.pipeline("sentiment-analysis", seq)).__name__ == "TextClassificationPipeline"
    tok = make_checkpoint("bert", "tok", ["O", "B-X"])
    assert type(fastx.pipeline("ner", tok, device=-1)).__name__ == "TokenClassificationPipeline"


def test_model_object_and_tokenizer_folder(make_checkpoint):
    folder = make_checkpoint("roberta", "seq", SENTIMENT_LABELS)
    model = fastx.AutoModelForSequenceClassification.from_pretrained(folder)
    by_object = fastx.pipeline("text-classification", model=model)  # tokenizer found at model.name_or_path
    by_both = fastx.pipeline("text-classification", model=model, tokenizer=fastx.AutoTokenizer.from_pretrained(folder))
    expected = transformers.pipeline("text-classification", model=str(folder))(CORPUS, top_k=None)
    assert_same(by_object(CORPUS, top_k=None), expected)
    assert_same(by_both(CORPUS, top_k=None), expected)


def test_init_parameters_apply_to_every_call(make_checkpoint):
    folder = make_checkpoint("bert", "seq", SENTIMENT_LABELS)
    ours = fastx.pipeline("text-classification", folder, top_k=2, function_to_apply="sigmoid", batch_size=4)
    theirs = transformers.pipeline("text-classification", str(folder), top_k=2, function_to_apply="sigmoid")
    assert_same(ours(CORPUS), theirs(CORPUS))
    assert_same(ours(CORPUS[0]), theirs(CORPUS[0]))


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match=r"unknown task 'summarisation'.*text-classification"):
        fastx.pipeline("summarisation", model="anything")


def test_model_whose_head_does_not_fit_names_task_and_model(make_checkpoint):
    base = make_checkpoint("bert", "base")  # no classifier weights
    with pytest.raises(ValueError, match=rf"text-classification: model '{base}' does not fit.*classifier"):
        fastx.pipeline("text-classification", model=base)
    mlm = fastx.AutoModelForMaskedLM.from_pretrained(make_checkpoint("distilbert", "mlm"))
    with pytest.raises(ValueError, match="token-classification: model DistilBertForMaskedLM does not fit"):
        fastx.pipeline("token-classification", model=mlm)


def test_causal_lm_for_an_encoder_task_is_refused(tmp_path):
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"fill-mask: model .* does not fit.*AutoModelForMaskedLM.*gpt2"):
        fastx.pipeline("fill-mask", model=tmp_path)


def test_default_checkpoint_missing_offline_is_an_oserror_naming_it(offline_cache):
    with pytest.raises(OSError, match=r"distilbert-base-uncased-finetuned-sst-2-english.*Pass model="):
        fastx.pipeline("sentiment-analysis")
    with pytest.raises(OSError, match=r"google/vit-base-patch16-224.*Pass model="):
        fastx.pipeline("image-classification")


def test_default_checkpoint_is_read_from_the_hub_cache(offline_cache, make_checkpoint):
    """A cache where transformers' pipeline downloaded its default: fastx finds it offline, at that revision."""
    repo, revision = TASKS["text-classification"].default
    storage = offline_cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(make_checkpoint("distilbert", "seq", SENTIMENT_LABELS), storage / "snapshots" / commit)
    (storage / "refs").mkdir()
    (storage / "refs" / revision).write_text(commit)
    result = fastx.pipeline("sentiment-analysis")("I love it")
    assert len(result) == 1 and result[0]["label"] in SENTIMENT_LABELS


def test_embedded_defaults_resolve_to_the_packages():
    try:
        path, revision = _default_model("text-generation", TASKS["text-generation"])
    except OSError as exc:
        pytest.skip(str(exc))
    assert path.endswith(".gguf") and revision is None
    from fastx.checkpoints.defaults import default_embedding_model

    assert _default_model("feature-extraction", TASKS["feature-extraction"]) == (default_embedding_model(), None)
