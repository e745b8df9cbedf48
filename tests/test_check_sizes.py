"""scripts/check_sizes.py, run as a command: finds modules over the line limit and functions
(methods, nested functions) over theirs, prints one line each, and exits 1 over the limits,
0 within, 2 on a file it cannot parse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_sizes.py"


def _function(name: str, body_lines: int, indent: str = "") -> str:
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)


def test_offenders_are_found_and_named(tmp_path):
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "small.py").write_text(_function("fine", 5))
    inner = "".join(f"        y{i} = {i}\n" for i in range(10))
    big = ("class K:\n" + _function("method", 12, "    ") + _function("outer", 1)
           + "    def inner():\n" + inner + "    return inner\n")
    (src / "big.py").write_text(big + "\n" * 30)
    done = _run("--paths", str(src), "--max-module", "40", "--max-function", "10")
    assert done.returncode == 1
    found = [tuple(line.split("  ")) for line in done.stdout.splitlines()]
    big_path = str(src / "big.py")
    assert sorted(found) == sorted([
        (f"{big_path}:1", "module", "big", "58 lines"),
        (f"{big_path}:2", "function", "K.method", "13 lines"),
        (f"{big_path}:15", "function", "outer", "14 lines"),
        (f"{big_path}:17", "function", "outer.inner", "11 lines")])
    assert _run("--paths", str(src / "small.py"), "--max-module", "40",
                "--max-function", "10").returncode == 0


def test_exit_status_follows_the_limits(tmp_path):
    (tmp_path / "m.py").write_text(_function("f", 20))
    over = _run("--paths", str(tmp_path), "--max-function", "20")
    assert over.returncode == 1 and "function  f  21 lines" in over.stdout
    assert _run("--paths", str(tmp_path), "--max-function", "21").returncode == 0
    (tmp_path / "broken.py").write_text("def (:\n")
    broken = _run("--paths", str(tmp_path))
    assert broken.returncode == 2 and "cannot read" in broken.stderr
