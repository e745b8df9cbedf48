"""The ``ctflow`` command.

Each subcommand is a module in ``ctflow.commands`` exposing ``register(subparsers)``, which
adds its parser and sets ``func`` to the function that runs it (``run(args) -> int``).
Typed ctflow errors (and other expected failures such as unreadable files) become one line
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import CtflowError

COMMANDS = ("simulate", "reconstruct", "info", "train", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctflow",
        description="CT reconstruction with exact projection operators and flow-matching "
        "priors. Run 'ctflow COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"ctflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ctflow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ctflow.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _show_progress_messages()
    try:
        return int(args.func(args) or 0)
    except (CtflowError, ValueError, OSError) as exc:
        print(f"ctflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctflow {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130


def _show_progress_messages() -> None:
    """Informational messages of ctflow's libraries (e.g. a one-off projector build) go to
    stderr as ``ctflow: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ctflow: %(message)s"))
    logger = logging.getLogger("ctflow")  # the operators' loggers are ctflow.operators.*
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
