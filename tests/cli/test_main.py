"""The `fastx` command's entry point: help, usage errors (exit 2) and run-time errors (exit 1), one line each."""

import pytest

SUBCOMMANDS = ["generate", "chat", "embed", "serve", "quantize", "bench", "kernels", "selftest", "info"]


@pytest.mark.parametrize("command", ["", *SUBCOMMANDS])
def test_help(cli, tmp_path, command):
    result = cli.run(*([command] if command else []), "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: fastx {command}".rstrip())
    if not command:
        assert all(name in result.stdout for name in SUBCOMMANDS)


def test_usage_errors_exit_2_with_one_line(cli, tmp_path, tiny_llama):
    # bad flag values are refused before the model loads, naming the flag
    cli.assert_one_line_error(
        cli.run("generate", "hi", "--model", tiny_llama, "--temperature", "-1", cwd=tmp_path), 2, "--temperature"
    )
    cli.assert_one_line_error(cli.run("generate", "hi", "--max-tokens", "0", cwd=tmp_path), 2, "--max-tokens")
    cli.assert_one_line_error(cli.run("generate", "hi", "--top-p", "abc", cwd=tmp_path), 2, "--top-p")
    cli.assert_one_line_error(cli.run("generate", cwd=tmp_path), 2, "prompt")
    cli.assert_one_line_error(cli.run("kernels", "--target", "sm_70", cwd=tmp_path), 2, "sm_70")
    cli.assert_one_line_error(cli.run("bench", "everything", cwd=tmp_path), 2, "everything")
    cli.assert_one_line_error(cli.run("frobnicate", cwd=tmp_path), 2)


def test_runtime_errors_exit_1_with_one_line(cli, tmp_path):
    missing = tmp_path / "no_such_model"
    cli.assert_one_line_error(cli.run("generate", "hi", "--model", missing, cwd=tmp_path), 1, "no_such_model")
    cli.assert_one_line_error(cli.run("embed", "hi", "--model", missing, cwd=tmp_path), 1, "no_such_model")
    cli.assert_one_line_error(
        cli.run("generate", "hi", "--model", tmp_path / "absent.gguf", cwd=tmp_path), 1, "absent.gguf"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    cli.assert_one_line_error(cli.run("generate", "--file", bad, cwd=tmp_path), 1, "line 2")
    cli.assert_one_line_error(cli.run("generate", "--file", tmp_path / "absent.txt", cwd=tmp_path), 1, "absent.txt")
