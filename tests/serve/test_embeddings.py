"""/v1/embeddings from a server whose MODEL is an encoder, and the resident encoder behind it."""

import numpy as np
import pytest

from fastx.pipelines.sentence_embeddings import embed_texts
from fastx.serve.embeddings import Embedder, encode_vector

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

NAME = "minilm"


@pytest.fixture(scope="module")
def server(start_server, minilm):
    server = start_server([minilm, "--served-model-name", NAME])
    yield server
    server.stop()


def test_the_resident_encoder_equals_embed_texts_across_batches(minilm):
    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(40)]  # two batches of 32 and 8
    vectors, num_tokens = Embedder(str(minilm), "cpu").embed(texts)
    np.testing.assert_allclose(vectors.numpy(), embed_texts(str(minilm), texts).numpy(), rtol=0, atol=1e-6)
    assert vectors.shape == (40, 384)
    from fastx.processing import AutoTokenizer

    assert num_tokens == sum(len(ids) for ids in AutoTokenizer.from_pretrained(minilm)(texts)["input_ids"])
    assert encode_vector(vectors[0], "float") == vectors[0].tolist()


def test_an_encoder_server_embeds_and_does_not_generate(server, minilm):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [NAME]
    out = client.embeddings.create(model=NAME, input="A cat sits.")
    expected = embed_texts(str(minilm), ["A cat sits."]).numpy()[0]
    np.testing.assert_allclose(np.array(out.data[0].embedding, dtype=np.float32), expected, rtol=0, atol=1e-6)
    assert out.model == NAME and out.data[0].index == 0
    r = httpx.post(server.url + "/v1/completions", json={"model": NAME, "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    for bad, param in (({"input": ""}, "input"), ({"input": []}, "input"), ({"dimensions": 8}, "dimensions")):
        r = httpx.post(server.url + "/v1/embeddings", json={"model": NAME, "input": "x", **bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
