"""The ``ctflow`` command.

Each subcommand is a module in ``ctflow.commands`` exposing ``HELP`` (its one-line summary)
and ``register(subparsers)``, which adds its parser and sets ``func`` to the function that
runs it (``run(args) -> int``) and ``input_args`` to the names of the arguments that are
input paths: while the command runs, no output may replace them or a folder holding them
(ctflow.io.atomic.protect_inputs).  Only the chosen command's parser is built in full, and
command modules import their heavy dependencies (torch, the solvers) inside ``run``, so
``ctflow --help`` starts without importing torch.

Every failure becomes one line ``ctflow COMMAND: error: ...`` on stderr, never a traceback
(``--debug`` prints it): exit code 2 for ctflow's own errors, bad values and unreadable or
unwritable files, 1 for anything unexpected (out of memory, internal errors).  Ctrl-C
(SIGINT) and SIGTERM stop the command the same way: temporaries are removed, one line says
whether an output was already written, and the exit code is 128 + the signal number (130
for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from . import __version__
from .errors import CtflowError
from .io.atomic import commit_mark, protect_inputs, written_since

COMMANDS = ("simulate", "reconstruct", "info", "train", "bench", "study", "send", "serve")
GLOBAL_FLAGS = ("--debug",)
MESSAGE_CHARS = 400  # an unexpected exception's message is cut to this length

EPILOG = """\
Errors print one line and exit with code 2 (1 for unexpected failures; --debug shows the
traceback).  Ctrl-C and SIGTERM remove temporaries, say whether an output was already
written, and exit with code 130 (Ctrl-C) or 143 (SIGTERM)."""


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler (and standing for Ctrl-C): stop like KeyboardInterrupt."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_code(exc: BaseException) -> int:
    """128 + the signal number of an interruption (SIGINT for a plain KeyboardInterrupt)."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ctflow`` parser; only ``command``'s subparser is built in full (the others
    carry just their summary, enough for ``ctflow --help``)."""
    parser = argparse.ArgumentParser(
        prog="ctflow",
        description="CT reconstruction with exact projection operators and flow-matching "
        "priors. Run 'ctflow COMMAND --help' for the options of each command.",
        epilog=EPILOG, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ctflow {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"ctflow.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ctflow.commands.{name}":
                continue  # command not built yet
            raise
        if name == command:
            module.register(sub)
        else:
            sub.add_parser(name, help=module.HELP, add_help=False)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not a global flag)."""
    for word in argv:
        if word in GLOBAL_FLAGS:
            continue
        return word if word in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``ctflow ARGV``; returns the exit code (argparse's usage errors exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = chosen_command(argv)
    debug = "--debug" in argv[: argv.index(command) if command else len(argv)]
    label = f"ctflow {command}" if command else "ctflow"
    mark = commit_mark()
    with _interrupts() as interruption:
        try:
            parser = build_parser(command)
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return 0
            _show_progress_messages()
            inputs = [getattr(args, name) for name in getattr(args, "input_args", ())]
            with protect_inputs(inputs):  # no output may replace an input of the command
                return int(args.func(args) or 0)
        except KeyboardInterrupt as exc:
            print(f"{label}: {interrupt_message(exc, written_since(mark))}", file=sys.stderr)
            return exit_code(exc)
        except Exception as exc:  # the one place where any failure becomes one line
            if interruption.signum is not None:  # an interruption that became an error
                stop = Interrupted(interruption.signum)
                print(f"{label}: {interrupt_message(stop, written_since(mark))}",
                      file=sys.stderr)
                return exit_code(stop)
            if debug:
                traceback.print_exc()
            print(f"{label}: error: {describe(exc)}", file=sys.stderr)
            return 2 if isinstance(exc, (CtflowError, ValueError, OSError)) else 1


def interrupt_message(exc: BaseException, written: list[Path]) -> str:
    """``interrupted (SIGNAL) after writing OUT`` or ``interrupted (SIGNAL); nothing was
    written`` — ``written`` being the outputs really in place."""
    name = signal.Signals(exit_code(exc) - 128).name
    if written:
        return f"interrupted ({name}) after writing {', '.join(str(p) for p in written)}"
    return f"interrupted ({name}); nothing was written"


def describe(exc: BaseException) -> str:
    """One line for an exception: its message for expected errors, with the exception
    type for unexpected ones (cut to MESSAGE_CHARS)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (CtflowError, ValueError, OSError)) and text:
        return text
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 1] + "…"
    if _out_of_memory(exc, text):
        return "out of memory" + (f" ({type(exc).__name__}: {text})" if text else "")
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"unexpected failure ({detail}); run 'ctflow --debug ...' for the traceback"


def _out_of_memory(exc: BaseException, text: str) -> bool:
    """MemoryError, or torch's allocation failures (RuntimeError / OutOfMemoryError)."""
    return (isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__
            or "can't allocate memory" in text or "out of memory" in text.lower())


class _Interruption:
    """The first SIGINT or SIGTERM of a command, raised as :class:`Interrupted` in the main
    thread and remembered, so that an interruption some library turned into another
    exception (numpy's import turns a KeyboardInterrupt into an ImportError) still ends the
    command as interrupted.  SIGTERM after the first interruption is ignored."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = int(signum)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(self.signum)


@contextmanager
def _interrupts() -> Iterator[_Interruption]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (see _Interruption);
    a second SIGINT raises it again."""
    guard = _Interruption()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {s: signal.signal(s, guard.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted (not
    the stream of the first call: tests and embedding programs swap it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_progress_messages() -> None:
    """Informational messages of ctflow's libraries (e.g. a one-off projector build) go to
    stderr as ``ctflow: ...`` lines."""
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("ctflow: %(message)s"))
    logger = logging.getLogger("ctflow")  # the operators' loggers are ctflow.operators.*
    if not logger.handlers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


if __name__ == "__main__":
    sys.exit(main())
