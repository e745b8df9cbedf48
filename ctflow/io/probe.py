"""Hang- and crash-proof probing of untrusted files in a child process.

The HDF5 C library trusts the file's metadata in places.  Measured cases:

* a corrupt global heap collection (the ``GCOL`` block holding variable-length strings,
  e.g. the root attribute ``geometry``) whose objects' sizes lead the parser onto a
  free-space entry of size 0: the decoder loop never advances, and the first read of any
  string stored there spins at 100 % CPU for ever;
* a corrupt datatype message of a string attribute: the library segfaults.

Neither can be caught in-process, so a reader first runs :func:`walk_hdf5` (open the
file, read every attribute and every object's metadata, walk chunk indexes and read small
chunked datasets) in a child process (:func:`run_in_child`).  The child reports progress
through a pipe after each step (:func:`tick`); the parent kills it when no progress
arrives for ``idle_timeout_s`` (default :data:`PROBE_IDLE_S`, environment variable
``CTFLOW_HDF5_PROBE_TIMEOUT``) or when it runs longer than ``total_timeout_s``, and
reports a crash (the child killed by a signal).  Errors the child meets are ignored: the
real read reports them.  The child never outlives its parent (Linux) or its time budget.
It is forked (POSIX) or, without ``os.fork``, spawned.  Cost (measured, 48 KB example
file, torch loaded, 2 loaded cores): ~10 ms for fork and exit plus ~2-8 ms of walk.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection

import h5py
import numpy as np

PROBE_IDLE_S = 3.0  # kill the probe after this long without progress
PROBE_TOTAL_S = 120.0  # ... or after this long in all
PROBE_READ_BYTES = 16 * 2**20  # datasets up to this size are read in full by the probe
MAX_ATTR_BYTES = 2**20  # attributes larger than this are refused (and not read by the probe)
MAX_OBJECTS = 100_000  # the walk stops after this many objects
MAX_DEPTH = 32
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)

_conn: Connection | None = None  # the child's end of the progress pipe
_last_tick = 0.0


def idle_timeout() -> float:
    """The no-progress timeout: CTFLOW_HDF5_PROBE_TIMEOUT seconds, else PROBE_IDLE_S."""
    try:
        value = float(os.environ.get("CTFLOW_HDF5_PROBE_TIMEOUT", PROBE_IDLE_S))
    except ValueError:
        return PROBE_IDLE_S
    return value if value > 0 else PROBE_IDLE_S


def tick() -> None:
    """Report progress to the parent (in the child; at most every 50 ms; no-op elsewhere)."""
    global _last_tick
    now = time.monotonic()
    if _conn is not None and now - _last_tick > 0.05:
        _last_tick = now
        try:
            _conn.send_bytes(b".")
        except OSError:
            pass


def run_in_child(task: Callable[[], None], idle_timeout_s: float | None = None,
                 total_timeout_s: float = PROBE_TOTAL_S) -> str | None:
    """Run ``task()`` in a child process; None when it finished, else why it did not.

    ``task`` should call :func:`tick` after each step.  Whatever ``task`` raises is
    ignored.  Returns "crashed (signal N)", "exited with status N", or "made no progress
    for T s" / "was still running after T s" when the child had to be killed.
    """
    idle = idle_timeout() if idle_timeout_s is None else idle_timeout_s
    recv, send = multiprocessing.Pipe(duplex=False)
    child = _Child(task, send, total_timeout_s + 5)
    send.close()
    try:
        start = last = time.monotonic()
        while True:
            now = time.monotonic()
            if now - start > total_timeout_s:
                return f"was still running after {total_timeout_s:g} s"
            if now - last > idle:
                return f"made no progress for {idle:g} s"
            wait = min(last + idle, start + total_timeout_s) - now
            if recv.poll(max(wait, 0.0)):
                try:
                    recv.recv_bytes()
                except (EOFError, OSError):  # the child closed its end: it is done
                    break
                last = time.monotonic()
        code = child.wait()
    finally:
        recv.close()
        child.kill()
    if code < 0:
        return f"crashed (signal {-code})"
    if code > 0:
        return f"exited with status {code}"
    return None


class _Child:
    """A forked (or, without fork, spawned) child running ``_child_main``."""

    def __init__(self, task: Callable[[], None], send: Connection, lifetime_s: float):
        self.pid: int | None = None
        self.process: multiprocessing.process.BaseProcess | None = None
        args = (task, send, os.getpid(), lifetime_s)
        with warnings.catch_warnings():  # fork of a threaded process: the child only reads
            warnings.simplefilter("ignore", DeprecationWarning)
            if hasattr(os, "fork"):
                self.pid = os.fork()
                if self.pid == 0:
                    _child_main(*args)
            else:
                ctx = multiprocessing.get_context("spawn")
                self.process = ctx.Process(target=_child_main, args=args, daemon=True)
                self.process.start()

    def wait(self) -> int:
        """Exit status: >= 0 the exit code, < 0 the signal that killed the child."""
        if self.process is not None:
            self.process.join()
            return int(self.process.exitcode or 0)
        assert self.pid is not None
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if os.WIFSIGNALED(status):
            return -os.WTERMSIG(status)
        return os.WEXITSTATUS(status)

    def kill(self) -> None:
        """Kill and reap the child if it is still there."""
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join()
        elif self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None


def _child_main(task: Callable[[], None], send: Connection, parent: int,
                lifetime_s: float) -> None:
    """Child: no fault handler, no output, run the task, exit without cleanup handlers.

    The child never outlives its budget: SIGALRM (default action: terminate) after
    ``lifetime_s``, and on Linux SIGKILL when the parent dies (an orphan stuck in a C loop
    would otherwise spin for ever)."""
    global _conn
    _conn = send
    try:
        _die_with_parent(parent)
        if hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.setitimer(signal.ITIMER_REAL, lifetime_s)
        faulthandler.disable()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        task()
    except BaseException:
        pass
    finally:
        os._exit(0)


def _die_with_parent(parent: int) -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent (pid ``parent``)
    exits."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request
        os._exit(0)


# ------------------------------------------------------------------------------- HDF5 walk
def walk_hdf5(path: str | os.PathLike[str], paths: Iterable[str] = (),
              attributes: Iterable[str] = ()) -> None:
    """Touch everything a reader may touch in an HDF5 file; never raises.

    Every object reachable through hard links (depth <= MAX_DEPTH, <= MAX_OBJECTS), every
    attribute found by iteration plus the named ``attributes`` on each of them, and the
    named ``paths`` opened by name (name lookups and iteration take different code paths in
    the library).  Datasets: type, shape, layout; chunked ones (the only ones with an index
    and filters) also their chunk index, and they are read in full when at most
    PROBE_READ_BYTES.
    """
    try:
        f = h5py.File(path, "r")
    except Exception:
        return
    tick()
    names = list(attributes)
    seen: set[tuple[int, int]] = set()
    try:
        _guard(lambda: _walk(f, names, seen, 0))
        for p in paths:
            _guard(lambda p=p: _walk_path(f, p, names, seen))
    finally:
        _guard(f.close)


def _guard(step: Callable[[], object]) -> None:
    try:
        step()
    except Exception:
        pass
    tick()


def _walk_path(f: h5py.File, path: str, names: list[str], seen: set[tuple[int, int]]) -> None:
    if path in f:
        f.get(path, getlink=True)
        _walk(f[path], names, seen, 0)


def _walk(obj: h5py.HLObject, names: list[str | bytes], seen: set[tuple[int, int]],
          depth: int) -> None:
    info = h5py.h5o.get_info(obj.id)
    key = (info.fileno, info.addr)
    if key in seen or len(seen) >= MAX_OBJECTS or depth > MAX_DEPTH:
        return
    seen.add(key)
    found: list[str | bytes] = []
    _guard(lambda: found.extend(obj.attrs.keys()))
    for name in dict.fromkeys(found + names):
        _guard(lambda name=name: _probe_attribute(obj, name))
    if isinstance(obj, h5py.Dataset):
        _probe_dataset(obj)
    elif isinstance(obj, h5py.Group):
        members: list[str] = []
        _guard(lambda: members.extend(obj.keys()))
        for name in members:
            _guard(lambda name=name: _walk_member(obj, name, names, seen, depth))


def _walk_member(group: h5py.Group, name: str, names: list[str],
                 seen: set[tuple[int, int]], depth: int) -> None:
    if isinstance(group.get(name, getlink=True), h5py.HardLink):
        _walk(group[name], names, seen, depth + 1)


def _probe_attribute(obj: h5py.HLObject, name: str | bytes) -> None:
    if name not in obj.attrs:
        return
    aid = h5py.h5a.open(obj.id, name if isinstance(name, bytes) else name.encode())
    count = aid.get_space().get_simple_extent_npoints()
    nbytes = max(aid.get_storage_size(), count * max(aid.dtype.itemsize, 1))
    if nbytes <= MAX_ATTR_BYTES:
        obj.attrs[name]


def _probe_dataset(ds: h5py.Dataset) -> None:
    dtype, shape = ds.dtype, ds.shape
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL or plist.get_external_count() > 0:
        return  # readers refuse data stored in other files
    ds.id.get_storage_size()
    if layout != h5py.h5d.CHUNKED:
        return  # contiguous or compact data: a plain copy of bytes the library already checked
    if hasattr(ds.id, "chunk_iter"):
        ds.id.chunk_iter(lambda _: tick())
    if shape is not None and int(np.prod(shape, dtype=np.float64)) * dtype.itemsize \
            <= PROBE_READ_BYTES:
        ds[()]  # chunk index lookups and filters (decompression)
