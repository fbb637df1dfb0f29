"""The README's commands and CI stay in sync: CI runs exactly what a newcomer is told to run."""

import re
from pathlib import Path

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
