"""Imports point down only (entry → flows → tasks → core; core never imports Prefect), and no module
imports itself back through others (no import circles, counting imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "src" / "tuneloop"
ENTRY, FLOWS, TASKS = PKG / "cli", PKG / "flows", PKG / "tasks"
UPPER = {"tuneloop.cli", "tuneloop.flows", "tuneloop.tasks"}


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path, src: Path = ROOT / "src") -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, src: Path = ROOT / "src") -> set[str]:
    """Every module `path` imports, anywhere in the file, as dotted names (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, src).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.update(f"{base}.{a.name}" for a in node.names)  # a module `pkg.name`, or a name in `pkg`
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


def top_levels(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def in_layer(names: set[str], layer: str) -> bool:
    return any(n == layer or n.startswith(layer + ".") for n in names)


CORE = [p for p in files(PKG) if not any(p.is_relative_to(d) for d in (ENTRY, FLOWS, TASKS))]


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_prefect_flows_tasks_or_the_cli(path):
    names = imports(path)
    assert not top_levels(names) & {"prefect", "flows", "tasks"}
    assert not [layer for layer in UPPER if in_layer(names, layer)]


@pytest.mark.parametrize("path", files(TASKS), ids=lambda p: str(p.relative_to(ROOT)))
def test_tasks_do_not_import_flows_or_the_cli(path):
    names = imports(path)
    assert not in_layer(names, "tuneloop.flows") and not in_layer(names, "tuneloop.cli")


@pytest.mark.parametrize("path", files(FLOWS), ids=lambda p: str(p.relative_to(ROOT)))
def test_flows_do_not_import_the_cli(path):
    assert not in_layer(imports(path), "tuneloop.cli")


def test_no_flow_file_shadows_a_package():
    # Prefect puts a flow file's folder first on sys.path when it loads a deployment's entrypoint
    names = {p.stem for p in files(FLOWS)}
    assert not names & {"tasks", "tuneloop", "prefect", "flows", "torch", "transformers", "peft", "httpx"}


def import_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the project modules it names in an import (`from pkg import name`: `pkg.name` when that
    is a module, else `pkg`). The parent packages Python runs on the way are not counted: a package's
    `__init__` may re-export its submodules, which import their siblings."""
    paths = {module_name(p, src): p for p in files(src)}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in paths.items():
        graph[mod] = {r for n in imports(path, src) if (r := resolve(n)) and r != mod}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    found = circles(import_graph(ROOT / "src"))
    assert found == [], "import circles (break each by moving what both sides need into a third module): " + \
        "; ".join(" <-> ".join(c) for c in found)


def test_the_checkers_see_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom prefect import flow\n")
    assert "prefect" in top_levels(imports(bad, tmp_path))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")  # inside a function still counts
    (pkg / "b.py").write_text("from pkg import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert circles(import_graph(tmp_path)) == [["pkg.a", "pkg.b"]]
