"""The layering is written down (pyproject's import-linter contract) and checked; no private names cross packages."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "cpfd"
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(src_root: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], capture_output=True, text=True,
                          cwd=src_root, env={"PYTHONPATH": str(src_root), "PATH": "/usr/bin:/bin"})


def test_layers_contract_holds_and_fails_on_a_wrong_way_import(tmp_path):
    config = Path(__file__).parent.parent / "pyproject.toml"
    assert _lint(SRC.parent, config).returncode == 0
    copy = tmp_path / "src"
    shutil.copytree(SRC, copy / "cpfd", ignore=shutil.ignore_patterns("__pycache__"))
    config_path = copy / "cpfd" / "config.py"
    config_path.write_text(config_path.read_text() + "\nfrom cpfd.train import loop  # noqa: E402\n")
    broken = _lint(copy, config)
    assert broken.returncode != 0 and "cpfd.config -> cpfd.train" in broken.stdout.replace("\n", " ")


def test_no_private_name_is_imported_from_another_package():
    offenders = []
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        package = module.split(".")[1] if "." in module else ""
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cpfd."):
                source_package = node.module.split(".")[1]
                for alias in node.names:
                    if alias.name.startswith("_") and source_package != package:
                        offenders.append(f"{module}: from {node.module} import {alias.name}")
    assert offenders == []
