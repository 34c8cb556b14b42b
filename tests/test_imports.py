"""Every module imports, and every third-party package the code imports is declared.

CI installs into a fresh venv, so an undeclared dependency fails there at collection; this
test also fails on a machine that happens to have the package, and names it: each top-level
import outside the standard library and the project must belong to a distribution listed in
pyproject.toml (dependencies or an extra), not one that is only present transitively.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rollout", "actors", "sandbox_image")
OURS = {*PACKAGES, "launch", "tests"}


def _modules() -> list[str]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "bundled" in rel.parts or path.name == "__main__.py":
                continue  # bundled repos are task data; __main__ runs a program
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append(".".join(parts))
    return out


def _source_files() -> list[Path]:
    files = [ROOT / "launch.py"]
    for top in (*PACKAGES, "tests"):
        files += [p for p in (ROOT / top).rglob("*.py") if "bundled" not in p.parts]
    return files


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("module", _modules())
def test_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_every_third_party_import_is_declared() -> None:
    dists = md.packages_distributions()
    declared = _declared()
    # Imported lazily, behind a clear error, for optional features.
    # zstd image layers: Python 3.14's `compression.zstd`, or the `zstandard` package.
    optional = {"datasets", "compression", "zstandard"}
    missing: dict[str, set[str]] = {}
    for path in _source_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in OURS or top in sys.stdlib_module_names or top in optional:
                    continue
                owners = {_norm(d) for d in dists.get(top, [])}
                if not owners & declared:
                    missing.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_rollout_never_imports_ray() -> None:
    """`rollout/` is the Ray-free core (Ray wrappers live in `actors/`): no module of it
    imports `ray` or `actors`, at its top or lazily inside a function (a static check, so
    a lazy import on a path no test takes is caught too)."""
    offenders = []
    for path in sorted((ROOT / "rollout").rglob("*.py")):
        if "bundled" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] in ("ray", "actors")]
    assert not offenders, offenders
