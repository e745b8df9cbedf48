"""``ctflow bench``: compare reconstruction methods on the benchmark tasks (ctflow.bench)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InputError, MethodError

EPILOG = """\
Results go to OUT/results.jsonl (one line per task, size, method, image and seed), then
OUT/report.md (one table per task), OUT/<task>.csv, OUT/<task>.png (ground truth and one
example per method) and OUT/machine.json (machine and versions).  An interrupted run
continues with --resume.  Scores are mean ± std over images × seeds; peak MB is the largest
extra memory one solve needed (resident memory on CPU, allocated memory on CUDA).

examples:
  ctflow bench --tasks ct60,sr4 --methods tv,conjugate --size 64 --images 8 \\
      --seeds 0 --prior default -o bench_results/
  ctflow bench --list        (the tasks and methods; fbp applies to the CT tasks only)
"""


HELP = "benchmark reconstruction methods on the standard tasks"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help=HELP,
        description="Benchmark reconstruction methods on the standard tasks (held-out "
        "phantoms) or on your own data, with PSNR, SSIM, RMSE (HU), time, memory and NFE.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true",
                   help="list the tasks and methods, then exit")
    p.add_argument("--tasks", default=None,
                   help="comma-separated task names (default: the solver benchmark set; "
                   "see --list); not allowed with an HDF5 --data file")
    p.add_argument("--methods", default="fbp,cgls,tv",
                   help="comma-separated method names (default: %(default)s)")
    p.add_argument("--size", default="64",
                   help="image size(s), comma-separated, e.g. 64,128 (default: %(default)s)")
    p.add_argument("--images", type=int, default=8,
                   help="test images per task and size (default: %(default)s)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated seeds; each repeats every solve with its own "
                   "measurement noise and solver randomness (default: %(default)s)")
    p.add_argument("--prior", default="default",
                   help="prior for the flow methods; '{size}' in the name is replaced by the "
                   "image size (default: %(default)s)")
    p.add_argument("--nfe", type=int, default=None,
                   help="network-evaluation budget for every method that takes one")
    p.add_argument("--opt", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. conjugate.w=8 (VALUE read as JSON, else text); "
                   "repeatable")
    p.add_argument("--data", default=None, metavar="FILE_OR_SERIES",
                   help="your own test set: an HDF5 sinogram file with /image ground truth "
                   "(its slices and geometry are the problems), a DICOM series folder "
                   "(its slices, resized, are the ground truths of the tasks), or 'realct': "
                   "real patients' slices of the licensed pool, split by patient")
    p.add_argument("--split", default="test",
                   help="split of the test images: phantoms test|val; realct val|ood|train "
                   "(test = val there) (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("-o", "--out", default="bench_results",
                   help="output folder (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the results already in the output folder")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the report from the stored results")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run, input_args=("data", "prior"))


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InputError(f"expected comma-separated names, got {text!r}")
    return names


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in _names(text)]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_options(items: list[str], methods: list[str], nfe: int | None) -> dict[str, Any]:
    """``METHOD.KEY=VALUE`` strings (VALUE as JSON if it parses) → {method: {key: value}};
    ``nfe`` goes to every method whose solver takes an ``nfe`` option."""
    from ..bench import method_accepts

    options: dict[str, dict[str, Any]] = {}
    if nfe is not None:
        if nfe < 1:
            raise InputError(f"--nfe must be positive, got {nfe}")
        for method in methods:
            if method_accepts(method, "nfe"):
                options.setdefault(method, {})["nfe"] = nfe
    for item in items:
        head, sep, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not sep or not dot or not method or not key:
            raise MethodError(f"--opt {item!r}: expected METHOD.KEY=VALUE")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        options.setdefault(method, {})[key] = parsed
    return options


def _list() -> int:
    from ..bench.tasks import SOLVER_BENCH_TASKS, TASKS
    from ..solvers import SOLVERS

    print("tasks (* = default set):")
    for name, task in TASKS.items():
        mark = "*" if name in SOLVER_BENCH_TASKS else " "
        print(f" {mark} {name:<15} {task.family:<11} {task.description}")
    print("methods:")
    for name, spec in SOLVERS.items():
        prior = "prior" if spec.needs_prior else "     "
        print(f"   {name:<20} {prior}  {spec.summary}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    from ..bench import BenchConfig, run_bench, write_report

    if args.report_only:
        write_report(args.out)
        print(f"report written to {args.out}")
        return 0
    methods = _names(args.methods)
    config = BenchConfig(
        tasks=None if args.tasks is None else _names(args.tasks), methods=methods,
        size=_ints(args.size, "--size"), images=args.images,
        seeds=_ints(args.seeds, "--seeds"), prior=args.prior,
        options=parse_options(args.opt, methods, args.nfe), out=args.out, data=args.data,
        split=args.split, resume=args.resume, device=args.device, threads=args.threads)
    try:
        summary = run_bench(config, progress=not args.no_progress)
    except KeyboardInterrupt as exc:
        from ..cli import exit_code

        print(f"ctflow bench: interrupted; the finished solves are kept in {args.out}, "
              "continue them with --resume", file=sys.stderr)
        return exit_code(exc)  # 130 for Ctrl-C, 143 for SIGTERM
    print(f"{summary['new']} solves run, {summary['skipped']} already stored, "
          f"{summary['failed']} refused by their method; report: {summary['out']}/report.md")
    return 0
