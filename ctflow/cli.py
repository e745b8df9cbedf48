"""The ``ctflow`` command.  Each subcommand lives in a ``_cmd_*`` function; errors of ctflow
become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctflow",
        description="CT reconstruction with exact projection operators and flow-matching priors.",
    )
    parser.add_argument("--version", action="version", version=f"ctflow {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
