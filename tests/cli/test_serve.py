"""`fastx serve`'s command line: its flags, and wrong usage refused in one line before any model loads.

The server itself is tested in tests/serve (started through this command)."""


def test_serve_help_names_the_flags(cli, tmp_path):
    result = cli.run("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--api-key", "--embedding-model", "--max-num-seqs", "--dtype", "--max-body-bytes"):
        assert flag in result.stdout
    assert "127.0.0.1" in result.stdout


def test_serve_is_listed_among_the_commands(cli, tmp_path):
    result = cli.run("--help", cwd=tmp_path)
    assert result.returncode == 0 and "serve" in result.stdout


def test_bad_flags_are_usage_errors(cli, tmp_path):
    cli.assert_one_line_error(cli.run("serve", "--port", "70000", cwd=tmp_path), 2, "--port", "70000")
    cli.assert_one_line_error(cli.run("serve", "--max-num-seqs", "0", cwd=tmp_path), 2, "--max-num-seqs")
    cli.assert_one_line_error(cli.run("serve", "--max-waiting-requests", "-1", cwd=tmp_path), 2, "--max-waiting")
    cli.assert_one_line_error(cli.run("serve", "--api-key", " ", cwd=tmp_path), 2, "--api-key")
    cli.assert_one_line_error(cli.run("serve", "--dtype", "int3", cwd=tmp_path), 2, "--dtype")


def test_a_missing_model_is_one_line(cli, tmp_path):
    result = cli.run("serve", str(tmp_path / "no-such-model"), "--port", "0", cwd=tmp_path)
    cli.assert_one_line_error(result, 1, "no-such-model")


def test_an_encoder_cannot_also_take_an_embedding_model(cli, tmp_path, minilm):
    result = cli.run("serve", minilm, "--embedding-model", minilm, "--port", "0", cwd=tmp_path)
    cli.assert_one_line_error(result, 2, "--embedding-model", "encoder")
