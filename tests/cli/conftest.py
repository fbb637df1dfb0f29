"""What the `fastx` command's tests share: running `python -m fastx ...` as a user runs it, and tiny models.

Generation tests use a tiny random Llama saved with transformers (all-MiniLM-L6-v2's WordPiece
tokenizer and a small chat template), so they take seconds.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


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
