"""``ctflow serve``: a DICOM node that reconstructs the CT series it receives."""

from __future__ import annotations

import argparse
import signal
import threading

HELP = "run a DICOM node: receive CT series, run a job on them, forward the results"

EPILOG = """\
The node is a C-STORE and C-ECHO SCP for CT Image Storage (other SOP classes are refused
and logged).  Each instance is written to the spool before it is acknowledged.  A series
is complete when no instance arrived for --idle-seconds; the job (JOB.toml, see below)
then simulates the acquisition it describes on the received images and reconstructs it
with each method, writing one derived series per method (same study, new series UIDs,
ImageType DERIVED, a description naming method and settings), and the results are sent
to --forward.  Failed jobs are logged and retried; a series is removed from the spool only
after its results were forwarded (kept with --keep); a restart resumes the spool.  A
transfer whose association ended without a release waits for the rest and is moved to
SPOOL/dropped after --drop-seconds.  Progress and errors go to the log (--log, default
SPOOL/node.log) and stderr.  SIGTERM (or Ctrl-C) stops accepting, parks a running job
between two batches of slices (it runs again on restart), and exits (0 for SIGTERM).

JOB.toml:
  image_size = 64            # optional: resample received slices first
  [acquisition]
  views = 60                 # required
  geometry = "parallel"      # or "fan"
  photons = 1e5              # Poisson noise (or noise = 0.01, Gaussian; or neither)
  seed = 0
  [[methods]]
  name = "fbp"
  [[methods]]
  name = "conjugate"         # flow methods run at their prior's size (64² shipped)
  options = { nfe = 5 }
  [output]
  window = [40, 400]

example:
  ctflow serve --job job.toml --ae-title CTFLOW --port 11112 \\
      --forward ORTHANC@127.0.0.1:4242 --spool /var/spool/ctflow
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help=HELP, description="Run a DICOM node (C-STORE/C-ECHO SCP) that runs a "
        "reconstruction job on every CT series it receives and forwards the results.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job", required=True, metavar="JOB.toml", help="the job to run")
    p.add_argument("--ae-title", default="CTFLOW", help="this node's AE title "
                   "(default: CTFLOW)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default: 11112)")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (default: 0.0.0.0, every interface)")
    p.add_argument("--forward", metavar="AE@HOST:PORT", default=None,
                   help="where the derived series are sent (default: kept in the spool)")
    p.add_argument("--spool", default="ctflow-spool", metavar="DIR",
                   help="spool folder (default: ./ctflow-spool)")
    p.add_argument("--log", default=None, metavar="FILE",
                   help="log file (default: SPOOL/node.log)")
    p.add_argument("--idle-seconds", type=float, default=10.0,
                   help="a series is complete after this long without a new instance "
                   "(default: 10)")
    p.add_argument("--drop-seconds", type=float, default=3600.0,
                   help="an interrupted transfer is dropped (moved to SPOOL/dropped) after "
                   "this long without a new instance (default: 3600)")
    p.add_argument("--retries", type=int, default=3,
                   help="runs of a failing job before the series is marked failed "
                   "(default: 3)")
    p.add_argument("--backoff", type=float, default=5.0, metavar="SECONDS",
                   help="wait before re-running a job or re-forwarding, doubled each time "
                   "(default: 5)")
    p.add_argument("--keep", action="store_true",
                   help="keep received instances and results after forwarding")
    p.set_defaults(func=run, input_args=("job",))


def run(args: argparse.Namespace) -> int:
    from ..node.address import parse_peer, parse_port
    from ..node.job import load_job
    from ..node.server import Node
    from ..node.worker import WorkerSettings

    _check(args)
    forward = parse_peer(args.forward) if args.forward is not None else None
    job = load_job(args.job)
    settings = WorkerSettings(idle_s=args.idle_seconds, drop_s=args.drop_seconds,
                              max_attempts=args.retries, backoff_s=args.backoff,
                              keep=args.keep, calling_ae=args.ae_title)
    node = Node(args.spool, job, parse_port(args.port, "--port"), args.ae_title, args.host,
                forward, settings, args.log)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        node.start()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            node.stop()  # also on Ctrl-C, which then exits 130 through the CLI
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _check(args: argparse.Namespace) -> None:
    import math

    from ..errors import InputError

    for flag, value in (("--idle-seconds", args.idle_seconds),
                        ("--drop-seconds", args.drop_seconds), ("--backoff", args.backoff)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{flag} must be a finite number of seconds >= 0")
    if args.retries < 1:
        raise InputError("--retries must be >= 1")
    if args.drop_seconds < args.idle_seconds:
        raise InputError("--drop-seconds must be >= --idle-seconds")
