"""The README's commands and CI stay in sync, and its Python examples run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert match, f"README.md has no ```bash block after <!-- {marker} -->"
    return match.group(1).strip()


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    ci_command = re.search(r"# --- README test command ---\n(.*?)\n# --- end ---", ci, re.S)
    assert ci_command, ".ci/run lacks the marked README test command"
    assert ci_command.group(1).strip() == _readme_block("test-command")


def test_readme_main_command_runs_a_real_job():
    main = _readme_block("main-command")
    assert "pip install" in main and "fastx generate" in main


# A block preceded by `<!-- run-by: tests/... -->` needs more than a fresh interpreter (a running server):
# the named test runs it as written instead, and this file checks that the test exists and reads it.
_BLOCK = re.compile(r"(?:<!-- run-by: (\S+)[^>]*-->\s*)?```python\n(.*?)```", re.S)


def _all_python_blocks() -> list[tuple[str | None, str]]:
    return _BLOCK.findall((ROOT / "README.md").read_text())


def _python_blocks() -> list[str]:
    return [code for runner, code in _all_python_blocks() if not runner]


def test_blocks_run_elsewhere_are_run_by_the_named_test():
    runners = [runner for runner, _ in _all_python_blocks() if runner]
    for runner in runners:
        test = ROOT / runner
        assert test.is_file(), f"README names {runner} as the runner of a python block, and it does not exist"
        assert "README.md" in test.read_text(), f"{runner} does not read its block from README.md"


def test_the_readme_has_python_examples():
    assert len(_python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_every_readme_python_block_runs_as_written(index, tmp_path):
    """Each block in a fresh interpreter, from an empty folder, offline: what a newcomer pastes."""
    block = _python_blocks()[index]
    env = {k: v for k, v in os.environ.items() if k not in ("FASTX_BACKEND", "TRITON_INTERPRET")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"README python block {index} failed:\n{block}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), "the block printed nothing"
