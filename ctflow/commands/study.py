"""``ctflow study``: run a sparse-view CT study described by a TOML file, on Dask."""

from __future__ import annotations

import argparse
import sys

HELP = "run a sparse-view CT study (images × acquisitions × methods × seeds) on Dask"

EPILOG = """\
The TOML file names the data ([data] source = phantom | dicom | hdf5 | realct), the
acquisition grid ([acquisition] geometry, views, photons, angular_range_deg, dead_views),
the methods with their options ([methods.NAME]), the seeds and size ([study]), the metrics
and an optional region ([metrics]) and the report's reference method ([report]); the whole
file is checked before any work.  Example: docs/study/realct_example.toml.

Each task (one image x acquisition x seed x method) is one line of OUT/results.jsonl,
written as soon as it finishes; --resume runs only the tasks not stored yet.  Every task's
random numbers come from its key, so 1 worker, N workers and a cluster give identical
scores.  The report: OUT/report.md, OUT/summary.csv, curves against views and dose with
95 % intervals over images, paired differences to the reference method, montages with error
maps (PNG), and OUT/machine.json.

Clusters: by default a local Dask cluster of --workers processes (one thread each).  With
--scheduler tcp://HOST:8786 the study runs on an existing cluster, e.g. started on Slurm or
PBS with dask-jobqueue (SLURMCluster(...).scale(jobs=10); pass its scheduler address); the
workers need ctflow installed and the data at the same paths.  Workers started with
'--resources GPU=1' take the flow methods on CUDA when [study] device is cuda or auto.

examples:
  ctflow study docs/study/realct_example.toml -o study_out --workers 2
  ctflow study study.toml -o study_out --resume
  ctflow study study.toml -o study_out --scheduler tcp://10.0.0.5:8786
  ctflow study study.toml -o study_out --report-only
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "study", help=HELP,
        description="Run a study: every image x acquisition setting x seed x method is "
        "simulated, reconstructed and scored (PSNR, SSIM, RMSE in HU) on Dask workers, "
        "then summarised in a Markdown + PNG report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG.toml", help="the study file")
    p.add_argument("-o", "--out", required=True, help="output folder (created)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None,
                       help="local Dask worker processes (default: the number of CPU cores)")
    where.add_argument("--scheduler", default=None, metavar="tcp://HOST:8786",
                       help="run on an existing Dask cluster at this scheduler address")
    where.add_argument("--serial", action="store_true",
                       help="run every task in this process, without Dask")
    p.add_argument("--batch", type=int, default=None,
                   help="classical-method tasks per Dask task (default: automatic, at most 16)")
    p.add_argument("--resume", action="store_true",
                   help="continue the results already in the output folder")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the report from the stored results")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run, input_args=("config",))


def run(args: argparse.Namespace) -> int:
    from ..study.config import load_config

    if args.report_only:
        from ..study.report import write_report

        written = write_report(args.out)
        print(f"report written to {args.out}/report.md ({len(written['files'])} files)")
        return 0
    config = load_config(args.config)
    from ..study.runner import run_study

    try:
        summary = run_study(config, args.out, workers=args.workers, scheduler=args.scheduler,
                            resume=args.resume, serial=args.serial, batch=args.batch,
                            progress=not args.no_progress)
    except KeyboardInterrupt as exc:
        from ..cli import exit_code

        print(f"ctflow study: interrupted; the finished tasks are kept in {args.out}, "
              "continue them with --resume", file=sys.stderr)
        return exit_code(exc)
    print(f"{summary['new']} tasks run on {summary['workers']} worker(s) in "
          f"{summary['seconds']:.1f} s, {summary['skipped']} already stored, "
          f"{summary['failed']} refused by their method; report: {summary['out']}/report.md")
    if summary["lost"]:
        print(f"ctflow study: {summary['lost']} tasks did not finish "
              f"({summary.get('lost_reason', 'worker lost')}); run again with --resume",
              file=sys.stderr)
        return 1
    return 0
