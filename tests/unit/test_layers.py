"""Imports point down only: entry → flows → tasks → core; core never imports Prefect."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

CORE = ROOT / "src" / "tuneloop"
ENTRY = {CORE / "cli.py", CORE / "cli_manage.py"}  # the CLI is the entry layer: it may run flows and use Prefect's API


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value).split(".")[0])
    return names


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", [p for p in files(CORE) if p not in ENTRY], ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_prefect_flows_or_tasks(path):
    assert not imported_modules(path) & {"prefect", "flows", "tasks"}


@pytest.mark.parametrize("path", files(ROOT / "tasks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_tasks_do_not_import_flows(path):
    assert "flows" not in imported_modules(path)


def test_no_flow_file_shadows_a_package():
    names = {p.name for p in files(ROOT / "flows")}
    assert not names & {"tasks.py", "tuneloop.py", "prefect.py", "flows.py"}


def test_the_checker_sees_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom prefect import flow\n")
    assert "prefect" in imported_modules(bad)
