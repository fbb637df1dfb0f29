"""`fastx serve` with no MODEL: the embedded SmolLM2-135M-Instruct, its real tokenizer and chat template."""

import re
from pathlib import Path

import pytest

from fastx import LLM, SamplingParams

openai = pytest.importorskip("openai")

NAME = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(start_server, smollm2_gguf):
    server = start_server(["--dtype", "float32", "--num-kv-blocks", 64])
    yield server
    server.stop()


def test_the_default_model_chats_as_llm_chat_does(server, smollm2_gguf):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [NAME]
    llm = LLM(smollm2_gguf, dtype="float32", device="cpu", num_kv_blocks=64)
    expected = llm.chat(MESSAGES, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)[0]
    out = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    assert out.choices[0].message.content == expected.outputs[0].text
    assert "Paris" in out.choices[0].message.content
    assert out.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert out.usage.completion_tokens == len(expected.outputs[0].token_ids)
    chunks = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.outputs[0].text


def test_the_readme_example_runs_as_written(server, capsys):
    """The README's serving block (marked as run by this file), against this server (only the port differs)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"<!-- run-by: tests/serve/test_smollm2.py[^>]*-->\s*```python\n(.*?)```", readme, re.S).group(1)
    assert "http://127.0.0.1:8000/v1" in code
    exec(compile(code.replace("http://127.0.0.1:8000", server.url), "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.count("Paris") == 2, printed  # the reply, then the same reply streamed
