"""The layering rules of docs/DESIGN.md §1, checked on the source (every import statement,
including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    package = "ctflow." + ".".join(path.relative_to(ROOT / "ctflow").with_suffix("").parts[:-1]) \
        if path.is_relative_to(ROOT / "ctflow") else "ctflow.operators"
    package = package.rstrip(".")
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


def test_operators_import_nothing_from_the_rest_of_ctflow():
    bad = [(p.name, n) for p in (ROOT / "operators").glob("*.py") for n in _imports(p)
           if n.startswith("ctflow") and not n.startswith("ctflow.operators")]
    assert not bad, bad


def test_solvers_and_priors_import_neither_commands_nor_bench():
    layers = ("ctflow.commands", "ctflow.cli", "ctflow.bench", "ctflow.bench_report")
    bad = [(str(p.relative_to(ROOT)), n)
           for folder in ("solvers", "priors", "io")
           for p in (ROOT / "ctflow" / folder).glob("*.py") for n in _imports(p)
           if n.startswith(layers)]
    assert not bad, bad


def test_the_checker_sees_relative_imports():
    names = _imports(ROOT / "ctflow" / "solvers" / "conjugate.py")
    assert "ctflow.solvers.context" in names and "ctflow.operators" in names
