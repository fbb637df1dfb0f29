"""pyproject's package list covers every subpackage, so `pip install .` (not only -e) is complete."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    on_disk = {
        "fastx." + ".".join(p.parent.relative_to(ROOT / "fastx").parts) for p in (ROOT / "fastx").rglob("__init__.py")
    }
    on_disk = {name.rstrip(".") for name in on_disk} | {"fastx.kernels"}
    assert on_disk <= declared, f"missing from [tool.setuptools] packages: {sorted(on_disk - declared)}"
    assert config["package-dir"]["fastx.kernels"] == "kernels"
