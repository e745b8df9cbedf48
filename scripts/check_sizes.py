"""List the modules and functions over the size limits of the code style (docs/DESIGN.md):
modules above --max-module lines (default 400) and functions or methods above
--max-function lines (default 80, counted from the ``def`` line, decorators excluded, to
the function's last line, docstring included).

Scans the Python files of ctflow/, operators/ and scripts/ (``--paths`` to choose others)
and prints one line per offender, ``path:line  kind  name  N lines``.  Exit status 0 when
nothing is over the limits, 1 otherwise, 2 on a file that cannot be parsed.

    python3 scripts/check_sizes.py
    python3 scripts/check_sizes.py --paths ctflow/solvers --max-function 60
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ("ctflow", "operators", "scripts")


class Offender(NamedTuple):
    """One module or function over its limit."""

    path: str
    line: int
    kind: str  # "module" or "function"
    name: str
    lines: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}  {self.kind}  {self.name}  {self.lines} lines"


def python_files(paths: list[Path]) -> Iterator[Path]:
    """Every .py file under ``paths`` (files are taken as given), sorted, caches skipped."""
    for p in paths:
        if p.is_file():
            yield p
        else:
            yield from sorted(f for f in p.rglob("*.py") if "__pycache__" not in f.parts)


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            yield name, node
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def check_file(path: Path, max_module: int, max_function: int) -> list[Offender]:
    """The offenders of one file (SyntaxError propagates)."""
    text = path.read_text(encoding="utf-8")
    try:
        label = str(path.resolve().relative_to(ROOT))
    except ValueError:
        label = str(path)
    found = []
    n_lines = len(text.splitlines())
    if n_lines > max_module:
        found.append(Offender(label, 1, "module", path.stem, n_lines))
    for name, node in _functions(ast.parse(text, filename=str(path))):
        length = node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]
        if length > max_function:
            found.append(Offender(label, node.lineno, "function",  # type: ignore[attr-defined]
                                  name, length))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", nargs="+", type=Path,
                        default=[ROOT / p for p in DEFAULT_PATHS],
                        help="files or folders to scan (default: ctflow operators scripts)")
    parser.add_argument("--max-module", type=int, default=400,
                        help="most lines a module may have (default 400)")
    parser.add_argument("--max-function", type=int, default=80,
                        help="most lines a function may have (default 80)")
    args = parser.parse_args(argv)
    offenders: list[Offender] = []
    for path in python_files(args.paths):
        try:
            offenders += check_file(path, args.max_module, args.max_function)
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:
            print(f"check_sizes: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    for item in offenders:
        print(item)
    if offenders:
        print(f"{len(offenders)} over the limits (module {args.max_module} lines, "
              f"function {args.max_function} lines)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
