"""The package layout: no private name used outside its module, no import cycle, few top modules.

Static checks over the source (``ast``), so a refactor that reintroduces a back door fails here.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import bnnlib

ROOT = Path(bnnlib.__file__).resolve().parent
REPO = ROOT.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted(ROOT.rglob("*.py")) + sorted((REPO / "tests").glob("*.py"))


def _is_bnnlib_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None and name.startswith("bnnlib")
    except (ImportError, ValueError):
        return False


def private_uses(path: Path) -> list[str]:
    """``_name`` of another bnnlib module used in ``path``: imported, or read off a module alias."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnnlib"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if _is_bnnlib_module(full):
                    aliases[a.asname or a.name] = full
                elif a.name.startswith("_") and not a.name.startswith("__") and node.module != here:
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import {a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bnnlib") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != here
        ):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in aliases
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            found.append(
                f"{path.name}:{node.lineno}: setattr({node.args[0].id}, {node.args[1].value!r})"
            )
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith("bnnlib.") and " " not in text:
                mod, _, attr = text.rpartition(".")
                if attr.startswith("_") and not attr.startswith("__") and _is_bnnlib_module(mod):
                    found.append(f"{path.name}:{node.lineno}: {text!r}")
    return found


def test_no_private_name_is_used_across_modules():
    found = [use for p in _sources() for use in private_uses(p)]
    assert found == [], "\n".join(found)


def _module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(path: Path) -> set[str]:
    """bnnlib modules that ``path`` imports at module level (function-level imports included:
    a cycle through a lazy import is still a cycle)."""
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnnlib"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if _is_bnnlib_module(full) else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("bnnlib"))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the import graph (module -> modules it imports), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph or nxt == node:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if state.get(name) is None:
            found = visit(name)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = {_module_name(p): _imports_of(p) for p in sorted(ROOT.rglob("*.py"))}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    """The check above can fail: a package whose submodule imports a name of the package's
    __init__, which imports that submodule, is reported."""
    pkg = tmp_path / "bnnlib" / "demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from bnnlib.demo.a import f\n")
    (pkg / "a.py").write_text("from bnnlib.demo import g\n\ndef f(): pass\n")
    graph = {_module_name_in(tmp_path, p): _imports_of(p) for p in sorted(pkg.glob("*.py"))}
    assert graph == {"bnnlib.demo": {"bnnlib.demo.a"}, "bnnlib.demo.a": {"bnnlib.demo"}}
    assert find_cycle(graph) == ["bnnlib.demo", "bnnlib.demo.a", "bnnlib.demo"]


def test_few_plain_modules_at_the_top_and_each_package_imports():
    top = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__")
    assert len(top) <= 12, top
    for info in pkgutil.walk_packages([str(ROOT)], "bnnlib."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


def test_every_imported_name_exists():
    """Imports inside functions run late: a name moved or dropped would fail only on the path
    that reaches it (gpucheck's report once imported gpu_table from a module without it)."""
    missing = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("bnnlib")
            ):
                module = importlib.import_module(node.module)
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if (
                        a.name != "*"
                        and not hasattr(module, a.name)
                        and not _is_bnnlib_module(full)
                    ):
                        missing.append(f"{path.name}:{node.lineno}: {full}")
    assert missing == [], "\n".join(missing)


def test_environment_yml_lists_what_pyproject_installs():
    """environment.yml (conda users) says it mirrors pyproject.toml: every dependency and test
    extra that pip would install is listed there too."""
    import re

    import yaml

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)

    def name(spec: str) -> str:
        return re.split(r"[<>=!~\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")

    missing = sorted({name(s) for s in wanted} - {name(s) for s in pip})
    assert not missing, f"environment.yml lacks {missing} (pyproject.toml installs them)"
