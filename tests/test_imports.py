"""The library's layering, checked on every module it has (discovered, not listed):

- udl imports without Prefect: orchestration stays in tasks/ and flows/;
- clustering never loads torch, encoders never load FAISS, and reading another step's output
  (`udl.datasets`, the report) loads neither;
- no module imports a step module: steps share code through library modules only.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import udl

ROOT = Path(udl.__file__).resolve().parent
MODULES = sorted(
    ["udl", *(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="udl.") if not m.ispkg)]
)
# The pipeline's steps: each is called by one task and imports no other step.
STEPS = {"udl.corpus", "udl.features", "udl.embed", "udl.cluster.assign", "udl.report"}


def _loaded_after(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_modules_are_discovered() -> None:
    assert {"udl.datasets", "udl.embed", "udl.cluster.kmeans", "udl.encoders.twoview"} <= set(
        MODULES
    )


def test_udl_imports_without_prefect() -> None:
    assert "prefect" not in _loaded_after(MODULES)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("udl.cluster", {"torch"}),
        ("udl.encoders", {"faiss"}),
        ("udl.datasets", {"torch", "faiss"}),
        ("udl.report", {"torch", "faiss"}),
        ("udl.lineage", {"torch", "faiss"}),
    ],
)
def test_heavy_dependencies_stay_where_they_belong(package: str, forbidden: set[str]) -> None:
    modules = [m for m in MODULES if m == package or m.startswith(package + ".")]
    assert modules
    assert not forbidden & _loaded_after(modules), f"{package} loads {forbidden}"


def _imported_udl_modules(name: str) -> set[str]:
    """udl modules that module `name` imports (from its source, at any depth in the file)."""
    path = ROOT.parent / (name.replace(".", "/") + ".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("udl"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("udl"))
    return found & set(MODULES)


@pytest.mark.parametrize("name", [m for m in MODULES if m != "udl"])
def test_no_module_imports_a_step(name: str) -> None:
    assert not (_imported_udl_modules(name) & STEPS) - {name}
