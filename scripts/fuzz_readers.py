"""Fuzz the file readers: seeded mutations of valid examples, each read in a worker process.

The readers, the mutations and the outcomes (ok, clean, traceback, invalid, hang, crash) are
described in ctflow/bench/fuzz.py (the harness) and ctflow/bench/fuzz_cases.py.  Prints one
table (and with --messages how often each clean error came), lists clean errors that a
catch-all made of an exception raised in ctflow's own code (likely bugs), and exits 1 on any
traceback, invalid, hang or crash.  Needs os.fork.  Usage:
    python scripts/fuzz_readers.py [--cases 1000] [--seed 0] [--readers hdf5,dicom]
                                   [--jobs 2] [--timeout 30] [--messages]
                                   [--save-failures DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ctflow.bench.fuzz import READERS, run, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--readers", default="hdf5,dicom", help="comma-separated: hdf5,dicom")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--messages", action="store_true",
                        help="also list the clean error messages and how often each came")
    parser.add_argument("--save-failures", type=Path, default=None, metavar="DIR",
                        help="write the input of each failing case into DIR")
    args = parser.parse_args(argv)
    readers = tuple(r.strip() for r in args.readers.split(",") if r.strip())
    unknown = [r for r in readers if r not in READERS]
    if unknown or not hasattr(os, "fork"):
        parser.error(f"unknown reader(s) {unknown}" if unknown else "needs os.fork")
    report = run(readers, args.cases, args.seed, args.jobs, args.timeout, args.save_failures)
    print(table(report))
    for failure in report.failures[:30]:
        print(f"{failure['reader']} case {failure['case']} ({failure['what']}): "
              f"{failure['outcome']}: {failure['detail']}")
    if args.messages:
        for text, count in report.messages.most_common():
            print(f"{count:6d}  {text}")
    if report.wrapped:
        print(f"{len(report.wrapped)} clean error(s) wrap an exception raised in ctflow code:")
        for item in report.wrapped[:30]:
            print(f"  {item['reader']} case {item['case']} ({item['what']}): {item['wrapped']}"
                  f": {item['detail']}")
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
