"""The layering rules of docs/DESIGN.md §1, checked on the source (every import statement,
including those inside functions): scripts import the package, never each other, and
nothing outside scripts/ imports a script; and the rule that every file write goes through
the one atomic-write helper, ctflow/io/atomic.py (DESIGN §6)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules a file imports (relative imports resolved)."""
    package = "ctflow." + ".".join(path.relative_to(ROOT / "ctflow").with_suffix("").parts[:-1]) \
        if path.is_relative_to(ROOT / "ctflow") else "ctflow.operators"
    return _imports_of(path.read_text(encoding="utf-8"), package.rstrip("."))


def _imports_of(text: str, package: str) -> list[str]:
    """Absolute names of the modules ``text``, a module of ``package``, imports."""
    names = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            # ``from ctflow import bench`` imports the module ctflow.bench
            names += [f"{module}.{a.name}" for a in node.names if a.name != "*"]
    return names


def test_operators_import_nothing_from_the_rest_of_ctflow():
    bad = [(p.name, n) for p in (ROOT / "operators").glob("*.py") for n in _imports(p)
           if n.startswith("ctflow") and not n.startswith("ctflow.operators")]
    assert not bad, bad


def test_solvers_and_priors_import_neither_commands_nor_bench():
    """Nor the API above them (commands → api → solvers → priors, operators)."""
    layers = ("ctflow.commands", "ctflow.cli", "ctflow.bench", "ctflow.api")
    bad = [(str(p.relative_to(ROOT)), n)
           for folder in ("solvers", "priors", "io")
           for p in (ROOT / "ctflow" / folder).glob("*.py") for n in _imports(p)
           if n.startswith(layers)]
    assert not bad, bad


def test_the_checker_sees_relative_imports():
    names = _imports(ROOT / "ctflow" / "solvers" / "conjugate.py")
    assert "ctflow.solvers.context" in names and "ctflow.operators" in names
    text = "from .. import bench\nfrom ..commands import info\nimport ctflow.api\n"
    names = _imports_of(text, "ctflow.solvers")
    assert {"ctflow.bench", "ctflow.commands", "ctflow.api"} <= set(names)


SCRIPTS = {p.stem for p in (ROOT / "scripts").glob("*.py")}
# A script allowed to import a sibling script, with the reason.  The set must match what the
# scan finds exactly, so an entry is removed once the import is gone.
SCRIPT_IMPORTS: dict[tuple[str, str], str] = {}
# Files outside scripts/ allowed to load a script by its path, with the reason (exact set).
SCRIPT_LOADERS: dict[str, str] = {}


def _script_imports(path: Path) -> set[str]:
    """The scripts (by module name) that a file imports."""
    names = _imports_of(path.read_text(encoding="utf-8"), "scripts")
    return {n.split(".")[0] for n in names} & SCRIPTS


def _non_script_files() -> list[Path]:
    return sorted([*(ROOT / "ctflow").rglob("*.py"), *(ROOT / "operators").glob("*.py"),
                   *(ROOT / "tests").glob("*.py")])


def test_a_script_imports_no_other_script():
    """Shared logic lives in ctflow (ctflow.bench), not in a script another one imports."""
    found = {(str(p.relative_to(ROOT)), name) for p in (ROOT / "scripts").glob("*.py")
             for name in _script_imports(p) if name != p.stem}
    assert found == set(SCRIPT_IMPORTS), f"move the shared code into ctflow: {found}"


def test_nothing_else_imports_a_script():
    """The package and the tests import ctflow, never scripts/ (tests may run a script as a
    command)."""
    bad = [(str(p.relative_to(ROOT)), sorted(_script_imports(p))) for p in _non_script_files()
           if _script_imports(p)]
    assert not bad, bad
    loaders = {str(p.relative_to(ROOT)) for p in _non_script_files() if _loads_a_script(p)}
    assert loaders == set(SCRIPT_LOADERS), f"test ctflow.bench instead: {loaders}"


def _loads_a_script(path: Path) -> bool:
    """Whether a file loads a module from a file path (``spec_from_file_location``,
    ``runpy.run_path``) and names the folder "scripts"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    loads = any(isinstance(node, ast.Call) and (
        getattr(node.func, "attr", None) or getattr(node.func, "id", None)
    ) in ("spec_from_file_location", "run_path") for node in ast.walk(tree))
    return loads and any(isinstance(node, ast.Constant) and node.value == "scripts"
                         for node in ast.walk(tree))


# Files allowed their own rename-into-place, with the reason.  The set must match what the
# scan finds exactly, so an entry is removed once its file uses ctflow.io.atomic.
OWN_ATOMIC_WRITES = {
    "ctflow/io/atomic.py": "the helper itself",
    "operators/cache_entries.py": "operators/ imports nothing from ctflow: its one atomic write",
    "ctflow/node/spool.py": "moves a series folder into dropped/, not a new output",
}
_RENAMES = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("shutil", "move"),
            ("tempfile", "mkstemp"), ("tempfile", "NamedTemporaryFile")}


def _own_renames(path: Path) -> list[str]:
    """Calls in a file that write through a temporary of their own: ``os.replace``,
    ``os.rename``, ``shutil.move``, ``tempfile.mkstemp`` / ``NamedTemporaryFile``, any
    ``<path>.rename(...)`` and ``<path>.replace(target)`` (one argument: str.replace takes
    two), as ``module.name`` or ``.name`` with line numbers."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        path_rename = node.func.attr == "rename" or (
            node.func.attr == "replace" and len(node.args) == 1 and not node.keywords)
        if (owner, node.func.attr) in _RENAMES or path_rename:
            found.append(f"{owner}.{node.func.attr}:{node.lineno}")
    return sorted(found, key=lambda call: int(call.rsplit(":", 1)[1]))


def _writers() -> dict[str, list[str]]:
    files = [*(ROOT / "ctflow").rglob("*.py"), *(ROOT / "operators").glob("*.py"),
             *(ROOT / "scripts").glob("*.py")]
    found = {str(p.relative_to(ROOT)): _own_renames(p) for p in files}
    return {name: calls for name, calls in found.items() if calls}


def test_every_write_goes_through_the_atomic_helper():
    writers = _writers()
    extra = {k: v for k, v in writers.items() if k not in OWN_ATOMIC_WRITES}
    assert not extra, f"write outputs with ctflow.io.atomic.atomic_file instead: {extra}"
    stale = sorted(set(OWN_ATOMIC_WRITES) - set(writers))
    assert not stale, f"no longer writing on their own, drop from OWN_ATOMIC_WRITES: {stale}"


def test_the_write_scan_sees_each_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os, shutil, tempfile\n"
                      "os.replace('a', 'b')\nshutil.move('a', 'b')\n"
                      "fd, tmp = tempfile.mkstemp()\nPath('a').rename('b')\n"
                      "'text'.replace('a', 'b')\ntmp.replace(target)\n"
                      "dataclasses.replace(g, angles=a)\n")
    assert _own_renames(sample) == ["os.replace:2", "shutil.move:3", "tempfile.mkstemp:4",
                                    ".rename:5", "tmp.replace:7"]
