"""scripts/check_sizes.py: finds modules over the line limit and functions (methods, nested
functions) over theirs, prints one line each, and exits 1 over the limits, 0 within."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_sizes.py"


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def test_offenders_are_found_and_named(tmp_path):
    sizes = load_script("check_sizes")
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "small.py").write_text(_function("fine", 5))
    inner = "".join(f"        y{i} = {i}\n" for i in range(10))
    big = ("class K:\n" + _function("method", 12, "    ") + _function("outer", 1)
           + "    def inner():\n" + inner + "    return inner\n")
    (src / "big.py").write_text(big + "\n" * 30)
    found = [o for p in sizes.python_files([src]) for o in sizes.check_file(p, 40, 10)]
    assert sorted((Path(o.path).name, o.kind, o.name, o.lines) for o in found) == [
        ("big.py", "function", "K.method", 13), ("big.py", "function", "outer", 14),
        ("big.py", "function", "outer.inner", 11), ("big.py", "module", "big", 58)]
    assert sizes.check_file(src / "small.py", 40, 10) == []


def test_exit_status_follows_the_limits(tmp_path):
    (tmp_path / "m.py").write_text(_function("f", 20))

    def run(*limits: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "--paths", str(tmp_path), *limits],
                              capture_output=True, text=True, timeout=60)

    over = run("--max-function", "20")
    assert over.returncode == 1 and "function  f  21 lines" in over.stdout
    assert run("--max-function", "21").returncode == 0
    (tmp_path / "broken.py").write_text("def (:\n")
    broken = run()
    assert broken.returncode == 2 and "cannot read" in broken.stderr
