"""`fastx embed`: the JSON embeddings equal the Python API's."""

import json

import torch


def test_embed_matches_python_api(cli, tmp_path, minilm):
    sentences = ["A cat sits on the mat.", "Quantum chromodynamics describes the strong force."]
    result = cli.run("embed", *sentences, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["text"] for r in records] == sentences
    got = torch.tensor([r["embedding"] for r in records])
    assert got.shape == (2, 384)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))

    from fastx import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    model = AutoModel.from_pretrained(minilm)
    enc = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).last_hidden_state
    mask = enc["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
