"""``ctflow send``: store a folder of DICOM files on a PACS (C-STORE)."""

from __future__ import annotations

import argparse

HELP = "send a DICOM series (a folder) to a PACS by C-STORE"

EPILOG = """\
Every DICOM file under FOLDER (recursively; hidden files skipped) is sent to the peer
AE@HOST:PORT on one association, with presentation contexts negotiated from the files'
SOP classes and transfer syntaxes.  Instances not stored for a transient reason (peer
down, association refused or aborted, out of resources) are sent again up to --retries
times, waiting --backoff, 2×--backoff, ... seconds.  Nothing is deleted or changed
locally.  Exit code 0 when every instance was stored, 2 otherwise (one line says how many
were stored and why the first failure happened).

examples:
  ctflow send series/ ORTHANC@127.0.0.1:4242
  ctflow send series/ PACS@pacs.example.org:104 --calling-ae CTFLOW --retries 5
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "send", help=HELP, description="Store the DICOM files of a folder on a PACS or "
        "another DICOM node (C-STORE SCU).", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="FOLDER", help="folder holding the DICOM files")
    p.add_argument("peer", metavar="AE@HOST:PORT",
                   help="the receiving application entity, e.g. ORTHANC@127.0.0.1:4242")
    add_send_options(p)
    p.set_defaults(func=run, input_args=("folder",))


def add_send_options(p: argparse.ArgumentParser) -> None:
    """--calling-ae, --retries, --backoff, --timeout (shared with reconstruct --send)."""
    p.add_argument("--calling-ae", default="CTFLOW",
                   help="this side's AE title; the peer must know it (default: CTFLOW)")
    p.add_argument("--retries", type=int, default=2,
                   help="new associations for instances not yet stored (default: 2)")
    p.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                   help="wait before the first retry, doubled each time (default: 1)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout per connection and message (default: 30)")


def run(args: argparse.Namespace) -> int:
    from ..node.address import parse_peer

    peer = parse_peer(args.peer)
    print(send_folder(args.folder, peer, args))
    return 0


def check_send_options(args: argparse.Namespace) -> None:
    """Refuse negative retries and non-positive or non-finite times (InputError)."""
    import math

    from ..errors import InputError
    from ..node.address import check_ae_title

    check_ae_title(args.calling_ae, "--calling-ae")
    if args.retries < 0:
        raise InputError("--retries must be >= 0")
    for flag, value in (("--backoff", args.backoff), ("--timeout", args.timeout)):
        if not (math.isfinite(value) and value >= 0 and (flag != "--timeout" or value > 0)):
            raise InputError(f"{flag} must be a finite number of seconds (> 0 for --timeout)")


def send_folder(folder: str, peer, args: argparse.Namespace) -> str:
    """Send every DICOM file of ``folder`` to ``peer`` with a progress bar; returns the
    summary line, or raises NetworkError (one line) if any instance was not stored."""
    from tqdm import tqdm

    from ..errors import InputError
    from ..node.store import dicom_files, send_files

    check_send_options(args)
    files = dicom_files(folder)
    if not files:
        raise InputError(f"{folder}: no DICOM files to send")
    with tqdm(total=len(files), desc="send", unit="instance", disable=None) as bar:
        report = send_files(files, peer, args.calling_ae, retries=args.retries,
                            backoff_s=args.backoff, timeout_s=args.timeout,
                            progress=bar.update)
    if report.failed:
        from ..errors import NetworkError

        raise NetworkError(f"{report.summary()}; the files stay in {folder}")
    return report.summary()
