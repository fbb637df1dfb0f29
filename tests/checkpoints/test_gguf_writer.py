"""fastx.checkpoints.gguf_writer: safetensors Llama -> GGUF, read back by the `gguf` package, fastx,
transformers and (where it installs) llama.cpp."""

import collections
import json
import shutil

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from fastx import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from fastx.checkpoints import gguf_writer  # noqa: E402
from fastx.checkpoints.gguf import _unpermute_rotary_rows, transformers_name  # noqa: E402
from fastx.checkpoints.gguf_types import TYPES, tensor_type  # noqa: E402

T = gguf.GGMLQuantizationType
ALL_TYPES = list(TYPES)
# The keys llama.cpp's converter writes for a Llama and that every written file must carry.
REQUIRED_KEYS = {
    "general.architecture",
    "general.type",
    "general.name",
    "general.file_type",
    "general.quantization_version",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.dimension_count",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
}
# Keys of the real SmolLM2 file that come from the Hub model card, not from the checkpoint folder.
MODEL_CARD_KEYS = {
    "general.organization",
    "general.finetune",
    "general.basename",
    "general.size_label",
    "general.license",
    "general.languages",
    "tokenizer.ggml.add_space_prefix",
}


@pytest.fixture(scope="module")
def written(tiny_bpe_llama, tmp_path_factory):
    """type -> (path, report) of tiny_bpe_llama written once per type."""
    folder, cache = tmp_path_factory.mktemp("written"), {}

    def get(kind):
        if kind not in cache:
            path = folder / f"tiny-{kind}.gguf"
            cache[kind] = path, gguf_writer.quantize(tiny_bpe_llama, path, kind)
        return cache[kind]

    return get


def _fields(path):
    reader = gguf.GGUFReader(path)
    return reader, {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def _greedy(model, ids, n):
    return model.generate(ids, max_new_tokens=n, do_sample=False)[0, ids.shape[1] :].tolist()


def test_names_and_rotary_order_invert_the_reader():
    for hf in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.7.mlp.up_proj.weight"):
        assert transformers_name(gguf_writer.gguf_tensor_name(hf)) == hf
    assert gguf_writer.gguf_tensor_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert gguf_writer.gguf_tensor_name("model.rotary_emb.inv_freq") is None
    weight = torch.randn(4 * 16, 8)
    permuted = gguf_writer.permute_rotary_rows(weight, 4)
    assert not torch.equal(permuted, weight)
    assert torch.equal(_unpermute_rotary_rows(permuted, 4, "x", "blk.0.attn_q.weight"), weight)


def test_type_rules_follow_llama_cpp_on_smollm2_shapes():
    """SmolLM2-135M: hidden 576 (not a multiple of 256), ffn 1536, 30 layers, tied embeddings."""
    more_bits = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}  # llama.cpp's use_more_bits(i, 30)
    for layer in range(30):
        v = tensor_type("Q4_K_M", f"blk.{layer}.attn_v.weight", (192, 576), 30, True)
        down = tensor_type("Q4_K_M", f"blk.{layer}.ffn_down.weight", (576, 1536), 30, True)
        assert v == ((T.Q8_0, T.Q6_K) if layer in more_bits else (T.Q5_0, T.Q4_K))
        assert down == ((T.Q6_K, None) if layer in more_bits else (T.Q4_K, None))
        assert tensor_type("Q5_K_M", f"blk.{layer}.attn_q.weight", (576, 576), 30, True) == (T.Q5_1, T.Q5_K)
    assert tensor_type("Q4_K_M", "token_embd.weight", (49152, 576), 30, True) == (T.Q8_0, None)
    assert tensor_type("Q4_K_M", "blk.0.attn_norm.weight", (576,), 30, True) == (T.F32, None)
    assert tensor_type("Q6_K", "blk.0.attn_q.weight", (576, 576), 30, True) == (T.Q8_0, T.Q6_K)
    assert tensor_type("Q8_0", "blk.0.attn_q.weight", (576, 576), 30, True) == (T.Q8_0, None)
    assert tensor_type("Q8_0", "blk.0.attn_q.weight", (40, 40), 30, True) == (T.F16, T.Q8_0)
    # A Llama-2-7B-like shape: untied output -> Q6_K, token_embd keeps the mix's base type.
    assert tensor_type("Q4_K_M", "output.weight", (32000, 4096), 32, False) == (T.Q6_K, None)
    assert tensor_type("Q4_K_M", "token_embd.weight", (32000, 4096), 32, False) == (T.Q4_K, None)
    assert tensor_type("Q4_K", "output.weight", (32000, 4096), 32, False) == (T.Q4_K, None)  # pure


@pytest.mark.parametrize("kind", ALL_TYPES)
def test_every_type_reads_back_and_generates(kind, written, tiny_bpe_llama):
    path, report = written(kind)
    reader, fields = _fields(path)
    assert REQUIRED_KEYS <= set(fields), REQUIRED_KEYS - set(fields)
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["general.file_type"] == int(TYPES[kind][1])
    assert (fields["llama.block_count"], fields["llama.embedding_length"]) == (2, 256)
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (4, 2)
    assert fields["llama.rope.dimension_count"] == 64 and fields["llama.feed_forward_length"] == 320
    names = {t.name: t for t in reader.tensors}
    assert "output.weight" not in names  # tied, as llama.cpp writes it
    assert len(names) == 2 + 2 * 9 and len(report.tensors) == len(names)
    for entry in report.tensors:
        tensor = names[entry.name]
        assert tensor.tensor_type.name == entry.type
        assert tuple(int(d) for d in reversed(tensor.shape)) == entry.shape
        expected, fell_back = tensor_type(kind, entry.name, entry.shape, 2, True)
        assert (expected.name, fell_back.name if fell_back else None) == (entry.type, entry.fell_back_from)
        if len(entry.shape) == 1:
            assert entry.type == "F32"
    if kind in ("Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M"):
        assert {t.name for t in report.fallbacks} == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}  # 320 cols
        assert any(t.type in ("Q4_K", "Q5_K", "Q6_K") for t in report.tensors)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(path)("The quick brown fox", return_tensors="pt")["input_ids"]
    tokens = _greedy(model, ids, 6)
    assert len(tokens) >= 1 and all(0 <= t < 400 for t in tokens)


def test_f32_equals_the_source_exactly(written, tiny_bpe_llama):
    path, _ = written("F32")
    source = AutoModelForCausalLM.from_pretrained(tiny_bpe_llama, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    a, b = dict(source.named_parameters()), dict(loaded.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for model in (source, loaded):  # the same memory layout: mapped and owned weights take other GEMM paths
        for param in model.parameters():
            param.data = param.data.clone()
    tokenizer, gguf_tokenizer = AutoTokenizer.from_pretrained(tiny_bpe_llama), AutoTokenizer.from_pretrained(path)
    text = "Paris is the capital of France. 0123"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert torch.equal(gguf_tokenizer(text, return_tensors="pt")["input_ids"], ids)
    with torch.no_grad():
        assert torch.equal(source(ids).logits, loaded(ids).logits)
    assert _greedy(source, ids, 12) == _greedy(loaded, ids, 12)


@pytest.mark.parametrize("kind", ["F32", "Q8_0", "Q4_K_M"])
def test_transformers_loads_the_file_and_agrees_with_fastx(kind, written):
    transformers = pytest.importorskip("transformers")
    path, _ = written(kind)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    ours = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([[5, 40, 77, 123, 9, 300]])
    with torch.no_grad():
        expected, got = theirs(ids).logits, ours(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def smollm2_q8_0(smollm2_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("smollm2_gguf") / "smollm2-q8_0.gguf"
    return path, gguf_writer.quantize(smollm2_checkpoint, path, "Q8_0")


def test_smollm2_q8_0_same_greedy_tokens_and_metadata_as_a_real_file(smollm2_q8_0, smollm2_checkpoint, smollm2_gguf):
    path, report = smollm2_q8_0
    assert report.fallbacks == [] and 8.4 < report.bits_per_weight < 8.6
    _, ours = _fields(path)
    _, real = _fields(smollm2_gguf)
    assert set(real) - MODEL_CARD_KEYS <= set(ours), set(real) - MODEL_CARD_KEYS - set(ours)
    for key in real.keys() & ours.keys():
        if key.startswith("llama.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            assert ours[key] == real[key], key
        if key.endswith("_token_id"):
            assert ours[key] == real[key], key
    source = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint, dtype=torch.float32)
    quantized = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for prompt in ("The capital of France is", "def fibonacci(n):"):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        assert _greedy(quantized, ids, 12) == _greedy(source, ids, 12), prompt
    # "Water boils at": the source's greedy path has a near-tie (top-2 logits 0.066 apart at "°"), where
    # Q8_0's rounding may pick the other token; along the source's path every step with a margin of at
    # least 0.1 must agree.
    for prompt in ("Water boils at",):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        path_ids = source.generate(ids, max_new_tokens=12, do_sample=False)
        with torch.no_grad():
            expected, got = (
                source(path_ids).logits[0, ids.shape[1] - 1 :],
                quantized(path_ids).logits[0, ids.shape[1] - 1 :],
            )
        top2 = expected.topk(2).values
        clear = (top2[:, 0] - top2[:, 1]) >= 0.1
        assert clear.sum() >= 8
        assert torch.equal(got.argmax(-1)[clear], expected.argmax(-1)[clear]), prompt


@pytest.fixture
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K_M"])
def test_llama_cpp_agrees_with_fastx_on_the_written_file(kind, llama_cpp, smollm2_q8_0, smollm2_checkpoint, tmp_path):
    """llama.cpp loads the file, tokenizes as fastx does, and its greedy tokens equal fastx's on it (llama.cpp
    rounds the activations to 8 bits in its CPU dot products: logits agree to ~0.2-0.4 there, not exactly)."""
    path, _ = smollm2_q8_0
    if kind != "Q8_0":
        path = tmp_path / f"smollm2-{kind}.gguf"
        gguf_writer.quantize(smollm2_checkpoint, path, kind)
    ids = AutoTokenizer.from_pretrained(path)("The capital of France is", return_tensors="pt")["input_ids"]
    ours = _greedy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), ids, 8)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False)
    assert llm.tokenize(b"The capital of France is", add_bos=False, special=False) == ids[0].tolist()
    theirs = []
    for token in llm.generate(ids[0].tolist(), top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        theirs.append(int(token))
        if len(theirs) == len(ours):
            break
    assert theirs == ours


def test_a_wordpiece_tokenizer_is_refused(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match="WordPiece"):
        gguf_writer.quantize(tiny_llama, tmp_path / "x.gguf", "F16")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_name_what_was_expected(tiny_bpe_llama, minilm, tmp_path):
    with pytest.raises(ValueError, match="--type: expected one of F32.*got 'Q3_K'"):
        gguf_writer.quantize(tiny_bpe_llama, tmp_path / "x.gguf", "Q3_K")
    with pytest.raises(OSError, match="MODEL: expected a checkpoint folder"):
        gguf_writer.quantize(tmp_path / "missing", tmp_path / "x.gguf", "F16")
    with pytest.raises(OSError, match="OUT: expected a .gguf file path.*folder"):
        gguf_writer.quantize(tiny_bpe_llama, tmp_path, "F16")
    with pytest.raises(ValueError, match="expected a Llama checkpoint.*'bert'"):
        gguf_writer.quantize(minilm, tmp_path / "x.gguf", "F16")
    (tmp_path / "exists.gguf").write_bytes(b"keep")
    with pytest.raises(OSError, match="already exists"):
        gguf_writer.quantize(tiny_bpe_llama, tmp_path / "exists.gguf", "F16")
    assert (tmp_path / "exists.gguf").read_bytes() == b"keep"


def test_a_failure_leaves_no_file(tiny_bpe_llama, tmp_path, monkeypatch):
    calls = collections.Counter()
    real = gguf_writer.encode_tensor

    def failing(array, ggml_type):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (simulated)")
        return real(array, ggml_type)

    monkeypatch.setattr(gguf_writer, "encode_tensor", failing)
    (tmp_path / "old.gguf").write_bytes(b"old")
    with pytest.raises(OSError, match="simulated"):
        gguf_writer.quantize(tiny_bpe_llama, tmp_path / "old.gguf", "Q8_0", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.gguf"]
    assert (tmp_path / "old.gguf").read_bytes() == b"old"


def test_sizes_and_bits_per_weight(written):
    sizes = {kind: written(kind)[1] for kind in ("F32", "F16", "Q8_0", "Q4_0")}
    assert sizes["F32"].bits_per_weight == 32.0
    assert sizes["F16"].output_bytes < sizes["F32"].output_bytes
    assert 8.0 < sizes["Q8_0"].bits_per_weight < 9.0 and 4.0 < sizes["Q4_0"].bits_per_weight < 5.0
    assert np.isclose(sizes["F32"].source_bytes, sizes["F32"].output_bytes, rtol=0.05)


@pytest.mark.parametrize(
    ("rope", "expected"),
    [
        ({"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0}, ("linear", 2.0, 50000.0)),
        ({"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0}, "rope scaling 'llama3' is not supported"),
    ],
)
def test_rope_scaling(rope, expected, tiny_bpe_llama, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_bpe_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("rope_theta", None)
    config.pop("rope_scaling", None)
    config["rope_parameters"] = rope
    (folder / "config.json").write_text(json.dumps(config))
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            gguf_writer.quantize(folder, tmp_path / "x.gguf", "F16")
        return
    gguf_writer.quantize(folder, tmp_path / "x.gguf", "F16")
    _, fields = _fields(tmp_path / "x.gguf")
    got = (fields["llama.rope.scaling.type"], fields["llama.rope.scaling.factor"], fields["llama.rope.freq_base"])
    assert got == expected


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_M"])
def test_bytes_equal_llama_cpps_own_quantizer(kind, llama_cpp, written):
    """llama.cpp's llama_model_quantize on the F32 file gives the same tensor types and bytes as fastx
    (plain types as --pure; tiny_bpe_llama's 320-long ffn_down rows exercise the fallbacks)."""
    import ctypes

    source, _ = written("F32")
    ours, _ = written(kind)
    theirs = source.with_name(f"llama-cpp-{kind}.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.pure, params.nthread = int(TYPES[kind][1]), not kind.endswith("_M"), 1
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    expected = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    got = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert got[name].tensor_type == tensor.tensor_type, name
        assert np.array_equal(np.asarray(got[name].data), np.asarray(tensor.data)), name
