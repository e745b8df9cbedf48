"""Start-up time of the ``ctflow`` command: wall time of ``ctflow --help`` and
``ctflow reconstruct --help`` (median of ``--runs`` fresh subprocesses, default 5), next to
a bare ``python -c pass`` for reference.  Prints a Markdown table.

    python3 scripts/bench_startup.py            # the ctflow entry point beside this Python
    python3 scripts/bench_startup.py --module   # python -m ctflow.cli instead

The ``ctflow`` entry point next to ``sys.executable`` is used when it exists (a pyenv or
similar shim on PATH would add its own start-up); otherwise ``python -m ctflow.cli``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = (("python -c pass", ["-c", "pass"]),
         ("ctflow --help", ["--help"]),
         ("ctflow reconstruct --help", ["reconstruct", "--help"]))


def command(args: list[str], module: bool) -> list[str]:
    """The argv that runs ``ctflow ARGS`` (or the bare interpreter for ``-c pass``)."""
    if args[:1] == ["-c"]:
        return [sys.executable, *args]
    entry = Path(sys.executable).parent / "ctflow"
    if not module and entry.is_file():
        return [str(entry), *args]
    return [sys.executable, "-m", "ctflow.cli", *args]


def wall_times(argv: list[str], runs: int) -> list[float]:
    """Seconds of ``runs`` subprocess runs of ``argv`` (each must exit 0)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=300)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: "
                             f"{done.stderr.decode(errors='replace').strip()}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (default: 5)")
    parser.add_argument("--module", action="store_true",
                        help="run python -m ctflow.cli instead of the entry point")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    print(f"| command | median s | min s | max s |  ({args.runs} runs each)")
    print("|---|---:|---:|---:|")
    for label, extra in CASES:
        times = wall_times(command(extra, args.module), args.runs)
        print(f"| {label} | {statistics.median(times):.3f} | {min(times):.3f} | "
              f"{max(times):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
